-- Renew the leases of deliveries this consumer still holds: XCLAIM with
-- JUSTID resets their idle time without counting a delivery. An entry that
-- another consumer took over (the lease had expired) is left alone and
-- reported; one no longer pending at all was finished (acknowledged by a
-- completion, perhaps this consumer's own whose reply is still on its way,
-- or dead-lettered), which is no lease lost to anyone.
--
-- KEYS[1] stage stream  ARGV[1] group  ARGV[2] consumer  ARGV[3..] entry ids
-- Returns the ids another consumer holds now.
local stream, group, me = KEYS[1], ARGV[1], ARGV[2]
local lost = {}
for i = 3, #ARGV do
  local pending = redis.call('XPENDING', stream, group, ARGV[i], ARGV[i], 1)
  if pending[1] then
    if pending[1][2] == me then
      redis.call('XCLAIM', stream, group, me, 0, ARGV[i], 'JUSTID')
    else
      lost[#lost + 1] = ARGV[i]
    end
  end
end
return lost
