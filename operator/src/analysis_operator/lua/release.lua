-- Release items waiting at an approval stage: each waiting entry whose item
-- is approved (or every entry, when all are) passes its input on to the next
-- stage, its outcome is recorded (first writer wins, so a repeated release
-- changes nothing) and it leaves the gate. Items not approved keep waiting.
-- A gate that is the last stage ends the items' journeys: their keys go to
-- the batch's finals, and their output is the input they waited with.
--
-- KEYS[1] gate stream  KEYS[2] outcomes  KEYS[3] gate counters
-- KEYS[4] the next stage's stream, or its gathering hash when it collects (fan-in)
-- KEYS[5] the batch's finals list
-- ARGV[1] batch uid  ARGV[2] gate stage  ARGV[3] JSON array of approved items, or "*" for all
-- ARGV[4] most entries to look at
-- ARGV[5] 'stream', 'gather', or 'none' (the gate is the last stage; KEYS[4] unused)
-- Returns how many items were released.
local all = ARGV[3] == '*'
local approved = {}
if not all then
  for _, item in ipairs(cjson.decode(ARGV[3])) do approved[item] = true end
end
local released = 0
for _, entry in ipairs(redis.call('XRANGE', KEYS[1], '-', '+', 'COUNT', tonumber(ARGV[4]))) do
  local id, fields = entry[1], entry[2]
  local f = {}
  for i = 1, #fields, 2 do f[fields[i]] = fields[i + 1] end
  if all or approved[f['item']] then
    local key = ARGV[1] .. '/' .. ARGV[2] .. '/' .. f['item'] .. '/' .. f['round'] .. '/' .. f['attempt']
    local outcome = {status = 'succeeded', approved = true, input = f['input']}
    if ARGV[5] == 'none' then outcome['output_key'] = f['input'] end
    if redis.call('HSETNX', KEYS[2], key, cjson.encode(outcome)) == 1 then
      redis.call('HINCRBY', KEYS[3], 'succeeded', 1)
      redis.call('HINCRBY', KEYS[3], 'approved', 1)
      if ARGV[5] == 'stream' then
        redis.call('XADD', KEYS[4], '*', 'item', f['item'], 'round', f['round'], 'attempt', '1',
          'input', f['input'], 'since', '0', 'feedback', '')
      elseif ARGV[5] == 'gather' then
        redis.call('HSET', KEYS[4], f['item'], f['input'])
      else
        redis.call('RPUSH', KEYS[5], key)
      end
      released = released + 1
    end
    redis.call('XDEL', KEYS[1], id)
  end
end
return released
