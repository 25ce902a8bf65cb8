-- Grant one call under a stage's limits, shared by every worker of the stage:
-- a sliding-window log of granted requests, and of reserved tokens. A grant
-- is allowed only if the last window (plus a guard) holds fewer than the
-- limit, so no window of the configured length ever exceeds it, unlike a
-- token bucket, which lets up to twice the limit through around a refill.
-- Requests are also paced, at least window/limit apart, so they reach the
-- provider spread out rather than in bursts at each window's edge.
-- Pauses hold every call, limits or not: until the pause ends (a 429's
-- retry-after, a quota reset), and while a quota pause stands (the provider
-- refused for quota or billing) all but one call, the probe, which is
-- granted once the pause ends and holds the others until it reports back or
-- its lease runs out.
-- Time is Redis's (TIME), the same for every worker.
--
-- KEYS[1] request log (zset)  KEYS[2] token log (zset)  KEYS[3] token amounts (hash)
-- KEYS[4] token sum  KEYS[5] pause-until (ms)  KEYS[6] quota pause (hash)
-- ARGV[1] window ms (guard included)  ARGV[2] requests per window (0: none)
-- ARGV[3] tokens per window (0: none)  ARGV[4] tokens to reserve  ARGV[5] reservation id
-- ARGV[6] probe lease ms
-- Returns 0 when granted, -1 when granted as the quota pause's probe, otherwise the ms to wait before asking again.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local window, max_req, max_tok = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local want = tonumber(ARGV[4])
local pause = tonumber(redis.call('GET', KEYS[5]) or '0')
if pause > now then return pause - now end
local probing = redis.call('EXISTS', KEYS[6]) == 1
if probing then
  local lease = tonumber(redis.call('HGET', KEYS[6], QUOTA_PROBE_UNTIL) or '0')
  if lease > now then return lease - now end
end
local function granted()
  if not probing then return 0 end
  redis.call('HSET', KEYS[6], QUOTA_PROBE, ARGV[5], QUOTA_PROBE_UNTIL, now + tonumber(ARGV[6]))
  redis.call('HINCRBY', KEYS[6], QUOTA_PROBES, 1)
  return -1
end
if max_req == 0 and max_tok == 0 then return granted() end
local start = now - window
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', start)
local expired = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', start)
if #expired > 0 then
  local freed = 0
  for _, amount in ipairs(redis.call('HMGET', KEYS[3], unpack(expired))) do
    freed = freed + tonumber(amount or '0')
  end
  redis.call('DECRBY', KEYS[4], freed)
  redis.call('HDEL', KEYS[3], unpack(expired))
  redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', start)
end
if max_req > 0 then
  if redis.call('ZCARD', KEYS[1]) >= max_req then
    local oldest = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
    return math.max(1, tonumber(oldest[2]) + window - now + 1)
  end
  local newest = redis.call('ZRANGE', KEYS[1], -1, -1, 'WITHSCORES')
  local spacing = math.floor(window / max_req)
  if newest[2] and tonumber(newest[2]) + spacing > now then
    return tonumber(newest[2]) + spacing - now
  end
end
if max_tok > 0 then
  -- A call larger than the whole budget waits for an empty window, then goes alone.
  want = math.min(want, max_tok)
  local used = tonumber(redis.call('GET', KEYS[4]) or '0')
  if used + want > max_tok then
    local log = redis.call('ZRANGE', KEYS[2], 0, -1, 'WITHSCORES')
    local amounts = {}
    for i = 1, #log, 2 do amounts[#amounts + 1] = log[i] end
    local values = redis.call('HMGET', KEYS[3], unpack(amounts))
    local freed = 0
    for i = 1, #log, 2 do
      freed = freed + tonumber(values[(i + 1) / 2] or '0')
      if used - freed + want <= max_tok then
        return math.max(1, tonumber(log[i + 1]) + window - now + 1)
      end
    end
    return window
  end
end
if max_req > 0 then redis.call('ZADD', KEYS[1], now, ARGV[5]) end
if max_tok > 0 then
  redis.call('ZADD', KEYS[2], now, ARGV[5])
  redis.call('HSET', KEYS[3], ARGV[5], want)
  redis.call('INCRBY', KEYS[4], want)
end
return granted()
