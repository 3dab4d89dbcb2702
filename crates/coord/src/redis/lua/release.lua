-- release: give a held lease up (handover), drop the stream's liveness, pool slot and record,
-- and publish the transition; all only if the fence still holds the lease.
-- KEYS: 1 lease string, 2 lease-expiry zset, 3 conn hash, 4 live zset, 5 pool hash
-- ARGV: 1 stream, 2 fence, 3 channel, 4 transition JSON, 5 retention ms of the tombstone
-- Returns 1 when the fence held (and the lease is released), else 0.
-- The lease string is kept as `{fence}:{owner}:released` (a tombstone, expiring after the
-- retention), so the releasing fence and every older one stay fenced; the next acquire takes
-- the stream at once.
local cur = redis.call('GET', KEYS[1])
if not cur then return 0 end
local f, rest = string.match(cur, '^(%d+):[^:]+(.*)$')
if f ~= ARGV[2] or rest ~= '' then return 0 end
redis.call('SET', KEYS[1], cur .. ':released', 'PX', ARGV[5])
redis.call('ZREM', KEYS[2], ARGV[1])
redis.call('DEL', KEYS[3])
redis.call('ZREM', KEYS[4], ARGV[1])
if redis.call('HGET', KEYS[5], ARGV[1]) == ARGV[2] then
  redis.call('HDEL', KEYS[5], ARGV[1])
end
redis.call('PUBLISH', ARGV[3], ARGV[4])
return 1
