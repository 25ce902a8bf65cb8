-- Claim new messages for one consumer, within the stage's concurrency: the
-- stage's workers together never hold more entries (the group's PEL, the
-- leases) than the stage's concurrency, however many pods the stage runs and
-- however many calls each may run. A consumer the operator retired to scale
-- the stage in claims nothing: checked in the same step, so the operator's
-- retire.lua, which retires only a consumer that holds nothing, and this
-- claim never cross. The group's size of PEL comes from XINFO GROUPS, which
-- does not walk the group's consumers (a stage collects one per pod it ever ran).
--
-- KEYS[1] stage stream  KEYS[2] the stage's retired consumers (a set)
-- ARGV[1] group  ARGV[2] consumer  ARGV[3] most entries wanted  ARGV[4] the stage's concurrency
-- Returns {entries} of XREADGROUP's shape ({{id, fields}, ...}) when it claimed any, else {CLAIM_RETIRED},
-- {CLAIM_FULL}, or {CLAIM_EMPTY, the group's last delivered id} (wait for an entry after it, then claim again).
local stream, group, consumer = KEYS[1], ARGV[1], ARGV[2]
if redis.call('SISMEMBER', KEYS[2], consumer) == 1 then
  return {CLAIM_RETIRED}
end
local held, last = 0, '0-0'
for _, info in ipairs(redis.call('XINFO', 'GROUPS', stream)) do
  local fields = {}
  for i = 1, #info, 2 do fields[info[i]] = info[i + 1] end
  if fields['name'] == group then
    held, last = tonumber(fields['pending']), fields['last-delivered-id']
  end
end
local free = tonumber(ARGV[4]) - held
if free <= 0 then
  return {CLAIM_FULL}
end
local reply = redis.call('XREADGROUP', 'GROUP', group, consumer, 'COUNT', math.min(tonumber(ARGV[3]), free),
  'STREAMS', stream, '>')
if reply and reply[1] and #reply[1][2] > 0 then
  return {reply[1][2]}
end
return {CLAIM_EMPTY, last}
