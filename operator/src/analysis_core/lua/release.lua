-- Release items waiting at an approval stage: each waiting entry whose item
-- is approved (or every entry, when all are) passes its input on to the next
-- stage, its outcome is recorded (first writer wins, so a repeated release
-- changes nothing) and it leaves the gate. Items not approved keep waiting.
-- A gate that is the last stage ends the items' journeys: their keys go to
-- the batch's finals, and their output is the input they waited with.
--
-- KEYS[1] gate stream  KEYS[2] outcomes  KEYS[3] gate counters
-- KEYS[4] the next stage's stream, or its gathering hash when it collects (fan-in)
-- KEYS[5] the batch's finals list
-- ARGV[1] batch uid  ARGV[2] gate stage  ARGV[3] JSON array of approved items, or "*" for all
-- ARGV[4] most entries to look at
-- ARGV[5] RELEASE_STREAM, RELEASE_GATHER, or RELEASE_NONE (the gate is the last stage; KEYS[4] unused)
-- Returns how many items were released.
local all = ARGV[3] == '*'
local approved = {}
if not all then
  for _, item in ipairs(cjson.decode(ARGV[3])) do approved[item] = true end
end
local released = 0
for _, entry in ipairs(redis.call('XRANGE', KEYS[1], '-', '+', 'COUNT', tonumber(ARGV[4]))) do
  local id, fields = entry[1], entry[2]
  local f = {}
  for i = 1, #fields, 2 do f[fields[i]] = fields[i + 1] end
  if all or approved[f[MSG_ITEM]] then
    local key = ARGV[1] .. '/' .. ARGV[2] .. '/' .. f[MSG_ITEM] .. '/' .. f[MSG_ROUND] .. '/' .. f[MSG_ATTEMPT]
    local outcome = {[OUTCOME_STATUS] = STATUS_SUCCEEDED, [OUTCOME_APPROVED] = true, [OUTCOME_INPUT] = f[MSG_INPUT]}
    if ARGV[5] == RELEASE_NONE then outcome[OUTCOME_OUTPUT_KEY] = f[MSG_INPUT] end
    if redis.call('HSETNX', KEYS[2], key, cjson.encode(outcome)) == 1 then
      redis.call('HINCRBY', KEYS[3], COUNT_SUCCEEDED, 1)
      redis.call('HINCRBY', KEYS[3], COUNT_APPROVED, 1)
      if ARGV[5] == RELEASE_STREAM then
        redis.call('XADD', KEYS[4], '*', MSG_ITEM, f[MSG_ITEM], MSG_ROUND, f[MSG_ROUND], MSG_ATTEMPT, '1',
          MSG_INPUT, f[MSG_INPUT], MSG_SINCE, '0', MSG_FEEDBACK, '')
      elseif ARGV[5] == RELEASE_GATHER then
        redis.call('HSET', KEYS[4], f[MSG_ITEM], f[MSG_INPUT])
      else
        redis.call('RPUSH', KEYS[5], key)
      end
      released = released + 1
    end
    redis.call('XDEL', KEYS[1], id)
  end
end
return released
