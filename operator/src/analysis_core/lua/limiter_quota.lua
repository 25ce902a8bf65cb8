-- The provider refused a call for quota or billing: pause every worker of the
-- stage and let one call at a time probe, each after a longer wait.
--
-- The first refusal starts the quota pause, waiting the first backoff. The
-- probe refused again doubles the backoff (up to the cap) and waits it. Any
-- other refused call was already on its way when the pause began: it leaves
-- the pause as it is, but if the pause has run out and nobody probes, it
-- counts as a probe would without doubling, so calls never go out freely
-- while the account still refuses. Every refusal records the provider's
-- latest words, and the model when that refusal concerns only the model.
--
-- KEYS[1] pause-until (ms)  KEYS[2] quota pause (hash)
-- ARGV[1] the provider's message  ARGV[2] the model refused ('' for the whole account)
-- ARGV[3] first backoff ms  ARGV[4] longest backoff ms  ARGV[5] the refused call's reservation id
-- Returns {ms until the next probe may go, what happened: 1 the pause began, 2 the probe was refused,
--          0 a call already on its way was refused}.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local pause = tonumber(redis.call('GET', KEYS[1]) or '0')
local backoff, what, hold = nil, 0, true
if redis.call('EXISTS', KEYS[2]) == 0 then
  backoff, what = tonumber(ARGV[3]), 1
  redis.call('HSET', KEYS[2], QUOTA_SINCE, now, QUOTA_BACKOFF, backoff, QUOTA_PROBES, 0)
elseif redis.call('HGET', KEYS[2], QUOTA_PROBE) == ARGV[5] then
  backoff = math.min(tonumber(ARGV[4]), 2 * tonumber(redis.call('HGET', KEYS[2], QUOTA_BACKOFF)))
  what = 2
  redis.call('HSET', KEYS[2], QUOTA_BACKOFF, backoff)
  redis.call('HDEL', KEYS[2], QUOTA_PROBE, QUOTA_PROBE_UNTIL)
else
  local lease = tonumber(redis.call('HGET', KEYS[2], QUOTA_PROBE_UNTIL) or '0')
  if pause > now then
    backoff = pause - now
  elseif lease > now then
    -- Someone probes: its answer decides, so wait for it without pausing anyone.
    backoff, hold = lease - now, false
  else
    backoff = tonumber(redis.call('HGET', KEYS[2], QUOTA_BACKOFF))
  end
end
redis.call('HSET', KEYS[2], QUOTA_MESSAGE, ARGV[1])
if ARGV[2] ~= '' then
  redis.call('HSET', KEYS[2], QUOTA_MODEL, ARGV[2])
else
  redis.call('HDEL', KEYS[2], QUOTA_MODEL)
end
if hold and now + backoff > pause then
  redis.call('SET', KEYS[1], now + backoff, 'PX', backoff + 1000)
end
return {backoff, what}
