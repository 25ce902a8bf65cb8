-- Everything the operator decides from, read in one atomic step: per stage
-- the stream length, leases (pending entries), delayed retries, counters and
-- quota pause, the items each consumer holds and the consumers retired to
-- scale in, plus the sealed stages and the seeded marker. Completions are
-- atomic too, so a snapshot never sees an item half-way between two stages.
--
-- KEYS: for each stage, its stream, delayed set, counters hash, gathering
-- hash, quota pause hash and retired consumers set (6 keys per stage, in
-- stage order), then the sealed set, the seeded marker, the batch's usage
-- hash and its flags hash.
-- ARGV[1] group
-- Returns {{len, pending, delayed, {counter, value, ...}, gathered, {quota field, value, ...},
--           {{consumer, held}, ...}, {retired consumer, ...}} per stage,
--          sealed members, the seeded marker (the layout version, or nil), {usage field, value, ...},
--          {flag, value, ...}}.
local stages = {}
for i = 1, #KEYS - 4, 6 do
  local len = redis.call('XLEN', KEYS[i])
  local pending, holders = 0, {}
  local ok, summary = pcall(redis.call, 'XPENDING', KEYS[i], ARGV[1])
  if ok and summary then
    pending = summary[1]
    if summary[4] then holders = summary[4] end
  end
  stages[#stages + 1] = {len, pending, redis.call('ZCARD', KEYS[i + 1]), redis.call('HGETALL', KEYS[i + 2]),
    redis.call('HLEN', KEYS[i + 3]), redis.call('HGETALL', KEYS[i + 4]), holders, redis.call('SMEMBERS', KEYS[i + 5])}
end
local sealed = redis.call('SMEMBERS', KEYS[#KEYS - 3])
local seeded = redis.call('GET', KEYS[#KEYS - 2])
return {stages, sealed, seeded, redis.call('HGETALL', KEYS[#KEYS - 1]), redis.call('HGETALL', KEYS[#KEYS])}
