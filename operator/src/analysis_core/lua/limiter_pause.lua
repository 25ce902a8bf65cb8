-- Hold every worker of the stage until the provider's quota resets (its
-- reset headers or a 429's retry-after said so). Never shortens a pause.
--
-- KEYS[1] pause-until (ms)  ARGV[1] ms from now
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local until_ms = now + tonumber(ARGV[1])
local current = tonumber(redis.call('GET', KEYS[1]) or '0')
if until_ms > current then
  redis.call('SET', KEYS[1], until_ms, 'PX', tonumber(ARGV[1]) + 1000)
end
return until_ms
