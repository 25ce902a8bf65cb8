-- Replace a token reservation with the real usage once the call returned,
-- so an over-estimate frees budget for the calls that follow.
--
-- KEYS[1] token amounts (hash)  KEYS[2] token sum
-- ARGV[1] reservation id  ARGV[2] tokens really used
-- Returns the change applied to the sum.
local reserved = redis.call('HGET', KEYS[1], ARGV[1])
if not reserved then return 0 end  -- already out of the window
local delta = tonumber(ARGV[2]) - tonumber(reserved)
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('INCRBY', KEYS[2], delta)
return delta
