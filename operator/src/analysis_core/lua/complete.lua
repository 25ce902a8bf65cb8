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
-- ARGV[7] a JSON array of the attempts, each an array:
--   [1] entry id  [2] idempotency key
--   [3] true if the attempt's result is to be stored
--   [4] object of counter increments
--   [5] array of routes, each {ROUTE_FIELDS: flat array of stream fields}
--       or, for a collect stage, {ROUTE_GATHER: item, ROUTE_INPUT: its input reference}
--   [6] where the attempt's route keys start in KEYS
--   [7] object of more results to store (a fanned-out child's input)
--   [8] true if the item's journey ends with this attempt (final)
--   [9] keys of the item's earlier attempts nothing needs any more (it ended with a success): their outcomes
--       become OUTCOME_SPENT (the key stays: a late duplicate is still known; a retried attempt keeps its status
--       and error class) and their results go; the ends
--       of earlier runs (failed, dead-lettered) stay whole. A fan-out's children are counted in the results
--       hash (<attempt>CHILD_INPUT_MARK); the last of them to end with a success spends the fan-out's attempt
-- ARGV[8..] two per attempt, in the same order: its outcome JSON and its result ('' where [3] is false), kept out
--           of the JSON above so that neither is escaped again nor decoded on its way into its hash
-- Returns {one per attempt: 1 when this call completed it, 0 for a duplicate;
--          the claimed entries as {id, {field, value, ...}}}.
local stream, group, consumer = KEYS[1], ARGV[1], ARGV[2]
local usage = {
  [USAGE_INPUT_TOKENS] = true, [USAGE_OUTPUT_TOKENS] = true, [USAGE_COST_NUSD] = true,
  [USAGE_CACHE_WRITE_TOKENS] = true, [USAGE_CACHE_READ_TOKENS] = true,
}

-- What the step adds up before writing it: each counter once, and one XACK and one XDEL that name every
-- delivery it finished (a command per step, not per item).
local counted, usage_counted, finished_ids = {}, {}, {}

local function finish(attempt, outcome, result)
  local id, idem = attempt[1], attempt[2]
  finished_ids[#finished_ids + 1] = id
  if redis.call('HSETNX', KEYS[2], idem, outcome) == 0 then
    return 0
  end
  if attempt[3] then
    redis.call('HSET', KEYS[3], idem, result)
  end
  local children = 0
  for key, value in pairs(attempt[7]) do
    redis.call('HSET', KEYS[3], key, value)
    if string.find(key, CHILD_INPUT_MARK, 1, true) then children = children + 1 end
  end
  if children > 0 then  -- a fan-out: how many of its children have yet to end with a success
    redis.call('HSET', KEYS[3], idem .. CHILD_INPUT_MARK, children)
  end
  for field, n in pairs(attempt[4]) do
    counted[field] = (counted[field] or 0) + n
    if usage[field] then usage_counted[field] = (usage_counted[field] or 0) + n end
  end
  local first_key = attempt[6]
  for i, route in ipairs(attempt[5]) do
    local key = KEYS[first_key + i - 1]
    if route[ROUTE_GATHER] then
      redis.call('HSET', key, route[ROUTE_GATHER], route[ROUTE_INPUT])
    else
      redis.call('XADD', key, '*', unpack(route[ROUTE_FIELDS]))
    end
  end
  if attempt[8] then
    redis.call('RPUSH', KEYS[6], idem)
  end
  for _, old in ipairs(attempt[9] or {}) do
    local raw = redis.call('HGET', KEYS[2], old)
    if raw and raw ~= OUTCOME_SPENT then
      local ok, said = pcall(cjson.decode, raw)
      -- An end of an earlier run (failed or dead-lettered, then re-run) stays as it was: the finals list names it.
      if not (ok and type(said) == 'table' and (said[OUTCOME_STATUS] == STATUS_FAILED
          or said[OUTCOME_STATUS] == STATUS_DEAD)) then
        if ok and type(said) == 'table' and said[OUTCOME_STATUS] == STATUS_RETRY then
          -- Why the item was retried stays readable (two short fields); the rest goes.
          redis.call('HSET', KEYS[2], old, cjson.encode({[OUTCOME_STATUS] = STATUS_RETRY,
            [OUTCOME_ERROR_CLASS] = said[OUTCOME_ERROR_CLASS]}))
        else
          redis.call('HSET', KEYS[2], old, OUTCOME_SPENT)
        end
        redis.call('HDEL', KEYS[3], old)
        -- A fanned-out child's input (<parent attempt>CHILD_INPUT_MARK<key>) is this item's alone: it goes too,
        -- and the last child to end spends its parent's attempt (children carry copies of what they need).
        local input = ok and type(said) == 'table' and said[OUTCOME_INPUT]
        local mark = type(input) == 'string' and string.find(input, CHILD_INPUT_MARK, 1, true)
        if mark and redis.call('HDEL', KEYS[3], input) == 1 then
          local parent = string.sub(input, 1, mark - 1)
          local left = parent .. CHILD_INPUT_MARK
          if redis.call('HEXISTS', KEYS[3], left) == 1 and redis.call('HINCRBY', KEYS[3], left, -1) <= 0 then
            redis.call('HDEL', KEYS[3], left, parent)
            if redis.call('HEXISTS', KEYS[2], parent) == 1 then redis.call('HSET', KEYS[2], parent, OUTCOME_SPENT) end
          end
        end
      end
    end
  end
  return 1
end

local done = {}
for i, attempt in ipairs(cjson.decode(ARGV[7])) do
  done[i] = finish(attempt, ARGV[6 + 2 * i], ARGV[7 + 2 * i])
end
for field, n in pairs(counted) do redis.call('HINCRBY', KEYS[4], field, n) end
for field, n in pairs(usage_counted) do redis.call('HINCRBY', KEYS[5], field, n) end
if #finished_ids > 0 then
  redis.call('XACK', stream, group, unpack(finished_ids))
  redis.call('XDEL', stream, unpack(finished_ids))
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
