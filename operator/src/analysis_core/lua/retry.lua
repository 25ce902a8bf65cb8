-- Schedule another try of a message after a delay, and acknowledge the
-- current delivery. When the failed attempt uses up an attempt, its outcome
-- (STATUS_RETRY) is recorded under its idempotency key first, so a slow duplicate
-- of the same attempt cannot schedule a second retry or route the item. A
-- rate-limited call keeps its attempt: nothing is recorded, and duplicates
-- collapse because the delayed set holds each message once.
--
-- KEYS[1] stage stream  KEYS[2] outcomes  KEYS[3] delayed set  KEYS[4] counts  KEYS[5] batch usage
-- ARGV[1] group  ARGV[2] entry id  ARGV[3] idempotency key
-- ARGV[4] outcome JSON, or "" when the attempt is kept
-- ARGV[5] delay in ms  ARGV[6] the message to run later (JSON flat field array)
-- ARGV[7] JSON object of counter increments
-- Returns 1 when scheduled, 0 for a duplicate.
local stream, group, id = KEYS[1], ARGV[1], ARGV[2]
local function ack()
  redis.call('XACK', stream, group, id)
  redis.call('XDEL', stream, id)
end
if ARGV[4] ~= '' then
  if redis.call('HSETNX', KEYS[2], ARGV[3], ARGV[4]) == 0 then ack() return 0 end
elseif redis.call('HEXISTS', KEYS[2], ARGV[3]) == 1 then
  ack()
  return 0
end
local t = redis.call('TIME')
local now_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZADD', KEYS[3], now_ms + tonumber(ARGV[5]), ARGV[6])
local usage = {
  [USAGE_INPUT_TOKENS] = true, [USAGE_OUTPUT_TOKENS] = true, [USAGE_COST_NUSD] = true,
  [USAGE_CACHE_WRITE_TOKENS] = true, [USAGE_CACHE_READ_TOKENS] = true,
}
for field, n in pairs(cjson.decode(ARGV[7])) do
  redis.call('HINCRBY', KEYS[4], field, n)
  if usage[field] then redis.call('HINCRBY', KEYS[5], field, n) end
end
ack()
return 1
