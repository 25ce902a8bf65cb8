-- The operator's first step of a grant, on one batch's keys: take back what
-- is left of the batch's last allowance (it expires now; the operator
-- refunds it to the account's log), and read what the batch's workers said
-- since: the calls waiting and the tokens they would reserve, the calls in
-- flight, and the report (settlements, pauses, refusals), which it clears.
-- Asks and calls in flight past their time (their worker died) are dropped.
--
-- KEYS[1] grant (hash)  KEYS[2] waiting (zset)  KEYS[3] wants (hash)  KEYS[4] in flight (zset)  KEYS[5] report (hash)
-- Returns {requests left, input left, output left, the grant's epoch, calls waiting, their input tokens,
--          calls in flight, the report as a flat list of fields and values}.
-- Inputs and outputs left are -1 where the grant did not limit them; the epoch is '' without a grant.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local g = redis.call('HMGET', KEYS[1], ALLOW_REQUESTS, ALLOW_INPUT, ALLOW_OUTPUT, ALLOW_EPOCH)
redis.call('DEL', KEYS[1])
local expired = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now)
if #expired > 0 then
  redis.call('HDEL', KEYS[3], unpack(expired))
  redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now)
end
local want_in = 0
local wants = redis.call('HVALS', KEYS[3])
for _, want in ipairs(wants) do want_in = want_in + tonumber(want) end
redis.call('ZREMRANGEBYSCORE', KEYS[4], '-inf', now)
local report = redis.call('HGETALL', KEYS[5])
redis.call('DEL', KEYS[5])
return {tonumber(g[1] or '0'), tonumber(g[2] or '-1'), tonumber(g[3] or '-1'), g[4] or '',
  #wants, want_in, redis.call('ZCARD', KEYS[4]), report}
