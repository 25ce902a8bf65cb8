-- Move retries that are due from the delayed set back into the stage stream,
-- where blocked workers pick them up at once.
--
-- KEYS[1] delayed set  KEYS[2] stage stream
-- ARGV[1] most messages to move
-- Returns {moved, ms until the next one is due or -1}.
local t = redis.call('TIME')
local now_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now_ms, 'LIMIT', 0, tonumber(ARGV[1]))
for _, message in ipairs(due) do
  redis.call('XADD', KEYS[2], '*', unpack(cjson.decode(message)))
  redis.call('ZREM', KEYS[1], message)
end
local nxt = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
local wait = -1
if nxt[2] then wait = math.max(0, tonumber(nxt[2]) - now_ms) end
return {#due, wait}
