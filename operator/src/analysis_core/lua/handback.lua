-- Give deliveries back without waiting for their lease to expire (graceful
-- shutdown): each entry is re-added at the end of the stream, where another
-- worker picks it up at once, and its delivery is acknowledged.
--
-- KEYS[1] stage stream  ARGV[1] group  ARGV[2..] entry ids
-- Returns how many were handed back.
local stream, group = KEYS[1], ARGV[1]
local n = 0
for i = 2, #ARGV do
  local entry = redis.call('XRANGE', stream, ARGV[i], ARGV[i])
  if entry[1] then
    redis.call('XADD', stream, '*', unpack(entry[1][2]))
    redis.call('XACK', stream, group, ARGV[i])
    redis.call('XDEL', stream, ARGV[i])
    n = n + 1
  end
end
return n
