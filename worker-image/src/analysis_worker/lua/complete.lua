-- Finish attempts for good (success or failure) and claim the consumer's
-- next messages, in one atomic step. For each attempt: record its outcome
-- under the idempotency key (the first completion wins), store the result,
-- count, route follow-up messages, acknowledge the delivery, and when the
-- item's journey ends here, append the key to the batch's finals. A second
-- completion of the same key only acknowledges its own delivery. Then, unless
-- the batch is suspended or its budget is used up (the check a claim always
-- passes first) or the operator retired the consumer to scale the stage in,
-- the consumer claims up to the given number of new messages, within the
-- stage's concurrency as claim.lua counts it, as XREADGROUP would without
-- blocking: a busy worker finishes a batch of items and takes the next in
-- one round trip.
--
-- KEYS[1] stage stream   KEYS[2] outcomes   KEYS[3] results   KEYS[4] counts
-- KEYS[5] the batch's usage (tokens and cost also count there, for budgets)
-- KEYS[6] the batch's finals list   KEYS[7] the batch's flags   KEYS[8] the stage's retired consumers
-- KEYS[9..] the routes' keys: the stream that receives a route, or for a
--           collect stage the hash that gathers its items until they are collected
-- ARGV[1] group  ARGV[2] consumer  ARGV[3] most new messages to claim (0: none)
-- ARGV[4] the budget's tokens, ARGV[5] its cost in nano-dollars ('' for no limit)
-- ARGV[6] the stage's concurrency: what its workers may hold together (0: no cap)
-- ARGV[7..] the attempts, ATTEMPT_ARGS arguments each:
--   +0 entry id  +1 idempotency key  +2 outcome JSON
--   +3 "1" if +4 is a result to store  +4 result
--   +5 JSON object of counter increments
--   +6 JSON array of routes, each {ROUTE_FIELDS: flat array of stream fields}
--      or, for a collect stage, {ROUTE_GATHER: item, ROUTE_INPUT: its input reference}
--   +7 where the attempt's route keys start in KEYS
--   +8 JSON object of more results to store (a fanned-out child's input)
--   +9 "1" if the item's journey ends with this attempt (final)
-- Returns {one per attempt: 1 when this call completed it, 0 for a duplicate;
--          the claimed entries as {id, {field, value, ...}}}.
local ATTEMPT_ARGS = 10
local stream, group, consumer = KEYS[1], ARGV[1], ARGV[2]
local usage = {[USAGE_INPUT_TOKENS] = true, [USAGE_OUTPUT_TOKENS] = true, [USAGE_COST_NUSD] = true}

local function finish(a)
  local id, idem = ARGV[a], ARGV[a + 1]
  if redis.call('HSETNX', KEYS[2], idem, ARGV[a + 2]) == 0 then
    redis.call('XACK', stream, group, id)
    redis.call('XDEL', stream, id)
    return 0
  end
  if ARGV[a + 3] == '1' then
    redis.call('HSET', KEYS[3], idem, ARGV[a + 4])
  end
  for key, value in pairs(cjson.decode(ARGV[a + 8])) do
    redis.call('HSET', KEYS[3], key, value)
  end
  for field, n in pairs(cjson.decode(ARGV[a + 5])) do
    redis.call('HINCRBY', KEYS[4], field, n)
    if usage[field] then redis.call('HINCRBY', KEYS[5], field, n) end
  end
  local first_key = tonumber(ARGV[a + 7])
  for i, route in ipairs(cjson.decode(ARGV[a + 6])) do
    local key = KEYS[first_key + i - 1]
    if route[ROUTE_GATHER] then
      redis.call('HSET', key, route[ROUTE_GATHER], route[ROUTE_INPUT])
    else
      redis.call('XADD', key, '*', unpack(route[ROUTE_FIELDS]))
    end
  end
  if ARGV[a + 9] == '1' then
    redis.call('RPUSH', KEYS[6], idem)
  end
  redis.call('XACK', stream, group, id)
  redis.call('XDEL', stream, id)
  return 1
end

local done = {}
for a = 7, #ARGV, ATTEMPT_ARGS do
  done[#done + 1] = finish(a)
end

local function may_claim()
  if redis.call('SISMEMBER', KEYS[8], consumer) == 1 then return false end
  if redis.call('HEXISTS', KEYS[7], FLAG_SUSPENDED) == 1 then return false end
  if redis.call('HEXISTS', KEYS[7], FLAG_BUDGET_EXCEEDED) == 1 then return false end
  if ARGV[4] == '' and ARGV[5] == '' then return true end
  local used = redis.call('HMGET', KEYS[5], USAGE_INPUT_TOKENS, USAGE_OUTPUT_TOKENS, USAGE_COST_NUSD)
  local tokens = tonumber(used[1] or '0') + tonumber(used[2] or '0')
  -- As plan.BudgetPlan.exceeded: a limit reached is a limit used up.
  if ARGV[4] ~= '' and tokens >= tonumber(ARGV[4]) then return false end
  if ARGV[5] ~= '' and tonumber(used[3] or '0') >= tonumber(ARGV[5]) then return false end
  return true
end

-- How many the stage's workers may still take together: its concurrency less what they hold (claim.lua's count).
local function room()
  local cap = tonumber(ARGV[6])
  if cap <= 0 then return tonumber(ARGV[3]) end
  for _, info in ipairs(redis.call('XINFO', 'GROUPS', stream)) do
    local fields = {}
    for i = 1, #info, 2 do fields[info[i]] = info[i + 1] end
    if fields['name'] == group then return math.min(tonumber(ARGV[3]), cap - tonumber(fields['pending'])) end
  end
  return tonumber(ARGV[3])
end

local claimed = {}
if tonumber(ARGV[3]) > 0 and may_claim() then
  local count = room()
  if count > 0 then
    local reply = redis.call('XREADGROUP', 'GROUP', group, consumer, 'COUNT', count, 'STREAMS', stream, '>')
    if reply then claimed = reply[1][2] end
  end
end
return {done, claimed}
