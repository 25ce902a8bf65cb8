-- A call on a provider account returned (or gave up): it leaves the batch's
-- in-flight set, and what it really used replaces what it reserved in the
-- report the operator reads, which settles the account's log entry of the
-- grant (named by its epoch) so an over-estimate frees the account's tokens.
--
-- KEYS[1] in flight (zset)  KEYS[2] report (hash)
-- ARGV[1] call id  ARGV[2] the grant's epoch  ARGV[3] input used minus reserved  ARGV[4] output used minus reserved
local gone = redis.call('ZREM', KEYS[1], ARGV[1])
if tonumber(ARGV[3]) ~= 0 then redis.call('HINCRBY', KEYS[2], REPORT_SETTLED_INPUT .. ARGV[2], ARGV[3]) end
if tonumber(ARGV[4]) ~= 0 then redis.call('HINCRBY', KEYS[2], REPORT_SETTLED_OUTPUT .. ARGV[2], ARGV[4]) end
return gone
