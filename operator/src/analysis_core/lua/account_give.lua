-- The operator's last step of a grant, on one batch's keys: the batch's new
-- allowance, which its workers spend until the operator's next grant. It
-- expires on its own shortly after, so a stopped operator's last grant
-- cannot be spent later than the account's window allows for.
--
-- KEYS[1] grant (hash)
-- ARGV[1] calls  ARGV[2] input tokens (-1: not limited)  ARGV[3] output tokens (-1: not limited)
-- ARGV[4] the grant's epoch  ARGV[5] ms until the next grant  ARGV[6] ms the allowance lives
-- ARGV[7] paused until (ms, 0: not paused)  ARGV[8] why the batch is held ('' if it is not)  ARGV[9] '1': a probe
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('HSET', KEYS[1], ALLOW_REQUESTS, ARGV[1], ALLOW_EPOCH, ARGV[4], ALLOW_NEXT, now + tonumber(ARGV[5]))
if tonumber(ARGV[2]) >= 0 then redis.call('HSET', KEYS[1], ALLOW_INPUT, ARGV[2]) end
if tonumber(ARGV[3]) >= 0 then redis.call('HSET', KEYS[1], ALLOW_OUTPUT, ARGV[3]) end
if tonumber(ARGV[7]) > now then redis.call('HSET', KEYS[1], ALLOW_PAUSED_UNTIL, ARGV[7]) end
if ARGV[8] ~= '' then redis.call('HSET', KEYS[1], ALLOW_HELD, ARGV[8]) end
if ARGV[9] == '1' then redis.call('HSET', KEYS[1], ALLOW_PROBE, '1') end
redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[6]))
return now
