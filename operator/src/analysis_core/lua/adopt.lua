-- A restarted mode: Batch worker takes over the entries of its stage's provider batches at once, whoever held
-- them and however recently (a worker that went away keeps nothing it could act on: the record says where each
-- entry is). Unlike a reclaim, no delivery is counted: the entry was not handed out again, its provider batch runs.
--
-- KEYS[1] stage stream
-- ARGV[1] group  ARGV[2] consumer  ARGV[3..] entry ids
-- Returns the entries it now holds, each {id, {field, value, ...}}; an id no longer pending (finished) is left out.
local stream, group, consumer = KEYS[1], ARGV[1], ARGV[2]
local held = {}
for i = 3, #ARGV do
  local claimed = redis.call('XCLAIM', stream, group, consumer, 0, ARGV[i], 'JUSTID')
  if claimed[1] then
    local entry = redis.call('XRANGE', stream, ARGV[i], ARGV[i])
    if entry[1] then held[#held + 1] = entry[1] end
  end
end
return held
