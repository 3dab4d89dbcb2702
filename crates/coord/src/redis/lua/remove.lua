-- remove: forget a deleted stream, whoever holds it: its lease and lease expiry, conn hash,
-- live entry, checkpoint and pool slot, in one step. Publishes nothing.
-- KEYS: 1 lease string, 2 lease-expiry zset, 3 conn hash, 4 live zset, 5 checkpoint string,
--       6 its guard, 7 pool hash
-- ARGV: 1 stream, 2 retention ms of the tombstone
-- Returns 1 when Redis held anything for the stream (a removal tombstone aside), else 0.
-- The lease string becomes `{fence}:{owner}:removed` (expiring after the retention), not
-- nothing: an owner that still runs the stream is then fenced at its next beat, where a
-- missing lease would read as "Redis lost its data" and be re-asserted. Like a release
-- tombstone, it is free for the next acquire, whose fence is higher.
local found = 0
local cur = redis.call('GET', KEYS[1])
if cur then
  local f, owner, rest = string.match(cur, '^(%d+):([^:]+)(.*)$')
  if rest ~= ':removed' then found = 1 end
  if f then
    redis.call('SET', KEYS[1], f .. ':' .. owner .. ':removed', 'PX', ARGV[2])
  else
    redis.call('DEL', KEYS[1])
  end
end
found = found + redis.call('ZREM', KEYS[2], ARGV[1]) + redis.call('ZREM', KEYS[4], ARGV[1])
  + redis.call('DEL', KEYS[3], KEYS[5], KEYS[6]) + redis.call('HDEL', KEYS[7], ARGV[1])
if found > 0 then return 1 end
return 0
