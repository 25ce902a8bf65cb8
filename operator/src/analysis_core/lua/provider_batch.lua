-- A provider batch's record, for a mode: Batch stage's worker: written before the batch is submitted, given the
-- provider's id once it is, removed once its results are collected. The record is what lets a restarted worker
-- pick up where it was: a batch with an id is polled and collected, never submitted again.
--
-- KEYS[1] the stage's provider batches (tag -> record JSON)   KEYS[2] their requests (tag -> JSON)
-- KEYS[3] the stage's counts
-- ARGV[1] PB_PREPARE, PB_SUBMITTED or PB_ENDED   ARGV[2] the batch's tag
-- PB_PREPARE:   ARGV[3] the record JSON   ARGV[4] its requests JSON (custom_id -> stream entry id)
-- PB_SUBMITTED: ARGV[3] the provider's id of the batch
-- Returns 1 when the record changed, 0 when it was already so (or, for PB_SUBMITTED, is gone).
local records, requests, counts = KEYS[1], KEYS[2], KEYS[3]
local op, tag = ARGV[1], ARGV[2]

if op == PB_PREPARE then
  if redis.call('HSETNX', records, tag, ARGV[3]) == 0 then return 0 end
  redis.call('HSET', requests, tag, ARGV[4])
  return 1
end

local raw = redis.call('HGET', records, tag)
if op == PB_SUBMITTED then
  if not raw then return 0 end
  local record = cjson.decode(raw)
  if record[PB_ID] ~= nil and record[PB_ID] ~= '' then return 0 end
  record[PB_ID] = ARGV[3]
  redis.call('HSET', records, tag, cjson.encode(record))
  redis.call('HINCRBY', counts, COUNT_PROVIDER_BATCHES, 1)
  return 1
end

if op == PB_ENDED then
  if not raw then return 0 end
  redis.call('HDEL', records, tag)
  redis.call('HDEL', requests, tag)
  local record = cjson.decode(raw)
  if record[PB_ID] ~= nil and record[PB_ID] ~= '' then
    redis.call('HINCRBY', counts, COUNT_PROVIDER_BATCHES_ENDED, 1)
  end
  return 1
end
return redis.error_reply('provider_batch: unknown op ' .. tostring(op))
