-- The quota pause's probe came back without a refusal for quota or billing.
-- If the provider answered (a success, or any other error: the account can
-- pay again), the quota pause is over and every worker of the stage goes on.
-- If it did not answer (a timeout, a network failure), nothing is known: the
-- probe's turn ends and the next may go after the current backoff, not at
-- once, so an unreachable provider is not probed in a tight loop.
-- A call that was not the probe changes nothing.
--
-- KEYS[1] pause-until (ms)  KEYS[2] quota pause (hash)
-- ARGV[1] the call's reservation id  ARGV[2] '1' the provider answered, '0' it did not
-- Returns 1 when the quota pause ended, 0 otherwise.
if redis.call('HGET', KEYS[2], QUOTA_PROBE) ~= ARGV[1] then return 0 end
if ARGV[2] == '1' then
  redis.call('DEL', KEYS[2])
  return 1
end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local backoff = tonumber(redis.call('HGET', KEYS[2], QUOTA_BACKOFF))
redis.call('HDEL', KEYS[2], QUOTA_PROBE, QUOTA_PROBE_UNTIL)
local pause = tonumber(redis.call('GET', KEYS[1]) or '0')
if now + backoff > pause then
  redis.call('SET', KEYS[1], now + backoff, 'PX', backoff + 1000)
end
return 0
