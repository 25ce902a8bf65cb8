-- Re-run items that failed for good or were dead-lettered, looking at a
-- slice of the batch's finals. Each such end that was not re-run before is
-- requeued into the stage where it ended, with its round, input and
-- feedback, at the next attempt number (idempotency keys stay unique) and
-- with MSG_FIRST set to that attempt, so the worker counts a fresh attempt
-- budget from it. The reruns hash (HSETNX) makes a second call a no-op for
-- ends already re-run; successes are never looked at. The failure counter
-- the end added is taken back (so the batch leaves Failed) and COUNT_RERUN is
-- counted.
--
-- An item is left alone when a collect stage after its stage has already
-- combined its items (the re-run could never be gathered into it), or when
-- its outcome lacks the input it needs (written by workers before re-runs
-- existed).
--
-- When anything was requeued the sealed set is cleared: stages after the
-- item's (and, in a judge loop, before it) must take work again, and the
-- operator re-seals from its next snapshot exactly what can be sealed.
--
-- KEYS[1] finals list  KEYS[2] outcomes  KEYS[3] reruns  KEYS[4] sealed set
-- KEYS[5..] per stage in plan order: its stream, counters, collected marker
-- ARGV[1] batch uid  ARGV[2] first index  ARGV[3] last index (inclusive, as LRANGE)
-- ARGV[4..] the stage names in plan order
-- Returns {requeued, left alone, looked at}.
local uid = ARGV[1]
local position = {}
for i = 4, #ARGV do position[ARGV[i]] = i - 3 end
local stages = #ARGV - 3
local function stage_key(index, which) return KEYS[4 + 3 * (index - 1) + which] end
local failure = {[STATUS_FAILED] = COUNT_FAILED, [STATUS_DEAD] = COUNT_DEAD_LETTERED}
local requeued, skipped = 0, 0
local ends = redis.call('LRANGE', KEYS[1], ARGV[2], ARGV[3])
for _, key in ipairs(ends) do
  local raw = redis.call('HGET', KEYS[2], key)
  local ok, outcome = pcall(cjson.decode, raw or '')
  local counter = ok and type(outcome) == 'table' and failure[outcome[OUTCOME_STATUS]]
  if counter and redis.call('HEXISTS', KEYS[3], key) == 0 then
    -- uid/stage/item/round/attempt; the item may contain "/", uid and stage never do.
    local stage, item, round, attempt = string.match(string.sub(key, #uid + 2), '^([^/]+)/(.+)/(%d+)/(%d+)$')
    local at = stage and position[stage]
    local blocked = not at or type(outcome[OUTCOME_INPUT]) ~= 'string'
    for later = (at or stages) + 1, stages do
      if redis.call('EXISTS', stage_key(later, 3)) == 1 then blocked = true end
    end
    if blocked then
      skipped = skipped + 1
    else
      local next_attempt = tostring(tonumber(attempt) + 1)
      local feedback = outcome[OUTCOME_FEEDBACK]
      if type(feedback) ~= 'string' then feedback = '' end
      redis.call('HSET', KEYS[3], key, uid .. '/' .. stage .. '/' .. item .. '/' .. round .. '/' .. next_attempt)
      redis.call('XADD', stage_key(at, 1), '*', MSG_ITEM, item, MSG_ROUND, round, MSG_ATTEMPT, next_attempt,
        MSG_INPUT, outcome[OUTCOME_INPUT], MSG_SINCE, '0', MSG_FEEDBACK, feedback, MSG_FIRST, next_attempt)
      redis.call('HINCRBY', stage_key(at, 2), counter, -1)
      redis.call('HINCRBY', stage_key(at, 2), COUNT_RERUN, 1)
      requeued = requeued + 1
    end
  end
end
if requeued > 0 then redis.call('DEL', KEYS[4]) end
return {requeued, skipped, #ends}
