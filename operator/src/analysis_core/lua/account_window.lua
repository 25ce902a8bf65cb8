-- The account's window, before a grant: apply what changed in entries still
-- inside it (refunds of allowances not spent, settlements of calls' real
-- token use), drop the entries that left it, and return what is granted in it.
-- Only the operator runs this, on the account's own keys.
--
-- KEYS[1] log (zset)  KEYS[2] amounts (hash)  KEYS[3] sums (hash)
-- ARGV[1] the window's length (ms)  ARGV[2..] changes: epoch, part, amount (repeated)
-- Returns {now (ms, Redis time), requests, input tokens, output tokens granted within the window}.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
for i = 2, #ARGV, 3 do
  if redis.call('ZSCORE', KEYS[1], ARGV[i]) then
    local field = ARGV[i] .. ':' .. ARGV[i + 1]
    local amount = tonumber(ARGV[i + 2])
    local current = tonumber(redis.call('HGET', KEYS[2], field) or '0')
    if current + amount < 0 then amount = 0 - current end
    if amount ~= 0 then
      redis.call('HINCRBY', KEYS[2], field, amount)
      redis.call('HINCRBY', KEYS[3], ARGV[i + 1], amount)
    end
  end
end
local start = now - tonumber(ARGV[1])
local old = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', start)
for _, epoch in ipairs(old) do
  for _, part in ipairs({ALLOW_REQUESTS, ALLOW_INPUT, ALLOW_OUTPUT}) do
    local field = epoch .. ':' .. part
    local amount = tonumber(redis.call('HGET', KEYS[2], field) or '0')
    if amount ~= 0 then redis.call('HINCRBY', KEYS[3], part, -amount) end
    redis.call('HDEL', KEYS[2], field)
  end
end
if #old > 0 then redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', start) end
local s = redis.call('HMGET', KEYS[3], ALLOW_REQUESTS, ALLOW_INPUT, ALLOW_OUTPUT)
return {now, tonumber(s[1] or '0'), tonumber(s[2] or '0'), tonumber(s[3] or '0')}
