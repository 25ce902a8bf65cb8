-- Enqueue a batch's initial items once: the marker makes a second call (an
-- operator that restarted mid-way) a no-op. Also creates every stage's
-- consumer group, from the start of its stream.
--
-- KEYS[1] seeded marker  KEYS[2] first stage stream  KEYS[3..] every stage stream
-- ARGV[1] group  ARGV[2] JSON array of messages, each a flat field array
-- ARGV[3] the layout version, kept in the marker
-- Returns how many items were enqueued (0 if already seeded).
for i = 2, #KEYS do
  redis.pcall('XGROUP', 'CREATE', KEYS[i], ARGV[1], '0', 'MKSTREAM')
end
if redis.call('SET', KEYS[1], ARGV[3], 'NX') == false then return 0 end
local messages = cjson.decode(ARGV[2])
for _, fields in ipairs(messages) do
  redis.call('XADD', KEYS[2], '*', unpack(fields))
end
return #messages
