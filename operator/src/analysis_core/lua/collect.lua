-- Fan-in: turn every item gathered for a collect stage into one message,
-- whose input is the list of their outputs in item order, and clear the
-- gathering hash, in one step. Runs once (the marker), when nothing upstream
-- can add items any more.
--
-- KEYS[1] gathering hash  KEYS[2] results  KEYS[3] stage stream  KEYS[4] collected marker
-- ARGV[1] result key for the combined input  ARGV[2] item id of the combined message
-- Returns how many items were collected (-1 if already collected).
if redis.call('SET', KEYS[4], '1', 'NX') == false then return -1 end
local flat = redis.call('HGETALL', KEYS[1])
local items = {}
for i = 1, #flat, 2 do items[#items + 1] = {flat[i], flat[i + 1]} end
table.sort(items, function(a, b) return a[1] < b[1] end)
local combined = {}
for _, pair in ipairs(items) do
  local output = redis.call('HGET', KEYS[2], pair[2]) or ''
  combined[#combined + 1] = {[COLLECTED_ITEM] = pair[1], [COLLECTED_OUTPUT] = output}
end
if #combined > 0 then
  redis.call('HSET', KEYS[2], ARGV[1], cjson.encode(combined))
  redis.call('XADD', KEYS[3], '*', MSG_ITEM, ARGV[2], MSG_ROUND, '0', MSG_ATTEMPT, '1', MSG_INPUT, ARGV[1],
    MSG_SINCE, '0', MSG_FEEDBACK, '')
end
redis.call('DEL', KEYS[1])
return #combined
