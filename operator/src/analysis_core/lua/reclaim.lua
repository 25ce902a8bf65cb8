-- Take over deliveries whose lease expired (their worker died or stalled):
-- XAUTOCLAIM moves entries idle for longer than the lease to this consumer
-- and counts the delivery. An entry delivered more often than the bound is
-- dead-lettered instead: its outcome is recorded (so a late completion is a
-- no-op), with the message's input and feedback so that a re-run can start
-- it again (producer.retry_failed); it is counted, appended to the batch's
-- finals (its journey ends here) and acknowledged.
--
-- KEYS[1] stage stream  KEYS[2] outcomes  KEYS[3] dead-letter hash  KEYS[4] counts
-- KEYS[5] the batch's finals list  KEYS[6] the stage's retired consumers (a set)
-- ARGV[1] group  ARGV[2] consumer  ARGV[3] lease ms  ARGV[4] most entries
-- ARGV[5] most deliveries  ARGV[6] batch uid  ARGV[7] stage
-- Returns the reclaimed entries as {id, fields, deliveries}; none for a consumer the operator retired (claim.lua).
local stream, group = KEYS[1], ARGV[1]
if redis.call('SISMEMBER', KEYS[6], ARGV[2]) == 1 then
  return {}
end
local claimed = redis.call('XAUTOCLAIM', stream, group, ARGV[2], ARGV[3], '0-0', 'COUNT', ARGV[4])
local out = {}
for _, entry in ipairs(claimed[2]) do
  local id, fields = entry[1], entry[2]
  local pending = redis.call('XPENDING', stream, group, id, id, 1)
  local deliveries = pending[1] and tonumber(pending[1][4]) or 1
  if deliveries > tonumber(ARGV[5]) then
    local f = {}
    for i = 1, #fields, 2 do f[fields[i]] = fields[i + 1] end
    local key = ARGV[6] .. '/' .. ARGV[7] .. '/' .. f[MSG_ITEM] .. '/' .. f[MSG_ROUND] .. '/' .. f[MSG_ATTEMPT]
    local why = 'delivered ' .. deliveries .. ' times without completing'
    local outcome = cjson.encode({[OUTCOME_STATUS] = STATUS_DEAD, [OUTCOME_DELIVERIES] = deliveries,
      [OUTCOME_ERROR] = why, [OUTCOME_INPUT] = f[MSG_INPUT] or '', [OUTCOME_FEEDBACK] = f[MSG_FEEDBACK] or ''})
    if redis.call('HSETNX', KEYS[2], key, outcome) == 1 then
      redis.call('HSET', KEYS[3], key, why)
      redis.call('HINCRBY', KEYS[4], COUNT_DEAD_LETTERED, 1)
      redis.call('RPUSH', KEYS[5], key)
    end
    redis.call('XACK', stream, group, id)
    redis.call('XDEL', stream, id)
  else
    redis.call('HINCRBY', KEYS[4], COUNT_REDELIVERED, 1)
    out[#out + 1] = {id, fields, deliveries}
  end
end
return out
