-- Read a slice of the batch's finals (the keys of attempts where an item's
-- journey ended) with what an export needs of each, in one atomic step: the
-- outcome, and for a success the output the item ended with. That output is
-- the attempt's own result unless the outcome names another (OUTCOME_OUTPUT_KEY:
-- a judge passes the reviewed answer on, an approval gate its input).
--
-- KEYS[1] finals list  KEYS[2] outcomes  KEYS[3] results
-- ARGV[1] first index  ARGV[2] last index (inclusive, as LRANGE)
-- Returns {{key, outcome JSON or nil, output or nil}, ...} in list order.
local out = {}
for _, key in ipairs(redis.call('LRANGE', KEYS[1], ARGV[1], ARGV[2])) do
  local raw = redis.call('HGET', KEYS[2], key)
  local output = false
  if raw then
    local ok, outcome = pcall(cjson.decode, raw)
    if ok and type(outcome) == 'table' and outcome[OUTCOME_STATUS] == STATUS_SUCCEEDED then
      local ref = outcome[OUTCOME_OUTPUT_KEY]
      if type(ref) ~= 'string' then ref = key end
      output = redis.call('HGET', KEYS[3], ref)
    end
  end
  out[#out + 1] = {key, raw, output}
end
return out
