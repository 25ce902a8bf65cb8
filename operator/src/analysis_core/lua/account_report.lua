-- Tell the operator what the provider said about the account, for all its
-- users: a pause until a time (a 429's retry-after), a refusal for quota or
-- billing (its words, and the model when only that model is refused), or a
-- probe the provider answered. The operator reads and clears the report at
-- its next grant; a longer pause never gives way to a shorter one.
--
-- KEYS[1] report (hash)
-- ARGV[1] what, by the report field it sets: REPORT_PAUSE_UNTIL (ARGV[2] ms from now),
-- REPORT_REFUSED (ARGV[2] the words, ARGV[3] the model or ''), REPORT_PASSED_AT
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
if ARGV[1] == REPORT_PAUSE_UNTIL then
  local until_ms = now + tonumber(ARGV[2])
  if until_ms > tonumber(redis.call('HGET', KEYS[1], REPORT_PAUSE_UNTIL) or '0') then
    redis.call('HSET', KEYS[1], REPORT_PAUSE_UNTIL, until_ms)
  end
elseif ARGV[1] == REPORT_REFUSED then
  redis.call('HSET', KEYS[1], REPORT_REFUSED, ARGV[2], REPORT_REFUSED_MODEL, ARGV[3], REPORT_REFUSED_AT, now)
elseif ARGV[1] == REPORT_PASSED_AT then
  redis.call('HSET', KEYS[1], REPORT_PASSED_AT, now)
end
return now
