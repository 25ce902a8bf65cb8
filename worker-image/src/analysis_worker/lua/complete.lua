-- Finish an attempt for good (success or failure) in one atomic step: record
-- its outcome under the idempotency key (the first completion wins), store
-- the result, count, route follow-up messages, acknowledge the delivery, and
-- when the item's journey ends here, append the key to the batch's finals.
-- A second completion of the same key only acknowledges its own delivery.
--
-- KEYS[1] stage stream   KEYS[2] outcomes   KEYS[3] results   KEYS[4] counts
-- KEYS[5] the batch's usage (tokens and cost also count there, for budgets)
-- KEYS[6] the batch's finals list
-- KEYS[7..] one per route: the stream that receives it, or for a collect
--           stage the hash that gathers its items until they are collected
-- ARGV[1] group  ARGV[2] entry id  ARGV[3] idempotency key  ARGV[4] outcome JSON
-- ARGV[5] "1" if ARGV[6] is a result to store  ARGV[6] result
-- ARGV[7] JSON object of counter increments  ARGV[8] JSON array of routes,
--         each {ROUTE_FIELDS: flat array of stream fields} or, for a collect stage,
--         {ROUTE_GATHER: item, ROUTE_INPUT: its input reference}
-- ARGV[9] JSON object of more results to store (a fanned-out child's input)
-- ARGV[10] "1" if the item's journey ends with this attempt (final)
-- Returns 1 when this call completed the attempt, 0 for a duplicate.
local stream, group, id = KEYS[1], ARGV[1], ARGV[2]
if redis.call('HSETNX', KEYS[2], ARGV[3], ARGV[4]) == 0 then
  redis.call('XACK', stream, group, id)
  redis.call('XDEL', stream, id)
  return 0
end
if ARGV[5] == '1' then
  redis.call('HSET', KEYS[3], ARGV[3], ARGV[6])
end
for key, value in pairs(cjson.decode(ARGV[9])) do
  redis.call('HSET', KEYS[3], key, value)
end
local usage = {[USAGE_INPUT_TOKENS] = true, [USAGE_OUTPUT_TOKENS] = true, [USAGE_COST_NUSD] = true}
for field, n in pairs(cjson.decode(ARGV[7])) do
  redis.call('HINCRBY', KEYS[4], field, n)
  if usage[field] then redis.call('HINCRBY', KEYS[5], field, n) end
end
for i, route in ipairs(cjson.decode(ARGV[8])) do
  if route[ROUTE_GATHER] then
    redis.call('HSET', KEYS[6 + i], route[ROUTE_GATHER], route[ROUTE_INPUT])
  else
    redis.call('XADD', KEYS[6 + i], '*', unpack(route[ROUTE_FIELDS]))
  end
end
if ARGV[10] == '1' then
  redis.call('RPUSH', KEYS[6], ARGV[3])
end
redis.call('XACK', stream, group, id)
redis.call('XDEL', stream, id)
return 1
