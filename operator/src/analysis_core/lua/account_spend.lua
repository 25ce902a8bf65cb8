-- Spend one call of the batch's allowance of a provider account, which the
-- operator grants by fair share (docs/design.md#provider-accounts). The
-- worker never touches the account's own keys: what it cannot spend now, it
-- asks for, by putting the call among the batch's waiting calls with the
-- input tokens it would reserve (its output tokens are its provider's maxTokens); the operator's next grant counts it.
--
-- A call takes one request and its tokens (where the account limits them;
-- a call larger than the grant's tokens waits for a grant that covers it).
-- A granted call moves to the in-flight set until it settles (or its deadline
-- passes, if its worker died), so the operator can count calls in flight.
-- Time is Redis's (TIME), as the operator's.
--
-- KEYS[1] grant (hash)  KEYS[2] waiting (zset)  KEYS[3] wants (hash)  KEYS[4] in flight (zset)
-- ARGV[1] call id  ARGV[2] input tokens  ARGV[3] output tokens  ARGV[4] how long an ask stands (ms)
-- ARGV[5] how long the call may stay in flight (ms)  ARGV[6] the wait when no grant says when to ask (ms)
-- Returns {0, epoch, probe} when granted, otherwise {ms to wait before asking again, held}:
-- held is the provider's refusal for quota while the account is held for it, '' otherwise.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local want_in, want_out = tonumber(ARGV[2]), tonumber(ARGV[3])
local g = redis.call('HMGET', KEYS[1], ALLOW_REQUESTS, ALLOW_INPUT, ALLOW_OUTPUT, ALLOW_EPOCH, ALLOW_NEXT,
  ALLOW_PAUSED_UNTIL, ALLOW_HELD, ALLOW_PROBE)
local requests, input, output = tonumber(g[1] or '0'), tonumber(g[2]), tonumber(g[3])
local paused = tonumber(g[6] or '0')
local function ask(wait)
  redis.call('ZADD', KEYS[2], now + tonumber(ARGV[4]), ARGV[1])
  redis.call('HSET', KEYS[3], ARGV[1], want_in)
  return {math.max(1, wait), g[7] or ''}
end
local next_grant = tonumber(g[5] or '0') - now
if next_grant <= 0 then next_grant = tonumber(ARGV[6]) end
if paused > now then return ask(paused - now) end
if requests < 1 or (input and input < want_in) or (output and output < want_out) then
  return ask(next_grant)
end
redis.call('HINCRBY', KEYS[1], ALLOW_REQUESTS, -1)
if input then redis.call('HINCRBY', KEYS[1], ALLOW_INPUT, -want_in) end
if output then redis.call('HINCRBY', KEYS[1], ALLOW_OUTPUT, -want_out) end
if g[8] == '1' then redis.call('HDEL', KEYS[1], ALLOW_PROBE) end
redis.call('ZREM', KEYS[2], ARGV[1])
redis.call('HDEL', KEYS[3], ARGV[1])
redis.call('ZADD', KEYS[4], now + tonumber(ARGV[5]), ARGV[1])
return {0, g[4], g[8] or '0'}
