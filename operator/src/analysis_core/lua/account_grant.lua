-- Record a grant in the account's window: what the operator is about to hand
-- out to batches, under one epoch (its time, ms), which refunds and
-- settlements name later. Only the operator runs this, on the account's keys.
--
-- KEYS[1] log (zset)  KEYS[2] amounts (hash)  KEYS[3] sums (hash)
-- ARGV[1] epoch  ARGV[2] requests  ARGV[3] input tokens  ARGV[4] output tokens
redis.call('ZADD', KEYS[1], tonumber(ARGV[1]), ARGV[1])
local parts = {ALLOW_REQUESTS, ALLOW_INPUT, ALLOW_OUTPUT}
for i, part in ipairs(parts) do
  local amount = tonumber(ARGV[i + 1])
  if amount ~= 0 then
    redis.call('HINCRBY', KEYS[2], ARGV[1] .. ':' .. part, amount)
    redis.call('HINCRBY', KEYS[3], part, amount)
  end
end
return 1
