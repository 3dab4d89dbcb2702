-- publish: a fence-checked state change. Records the new state in the conn hash (if the stream
-- has one) and publishes the transition.
-- KEYS: 1 lease string, 2 conn hash
-- ARGV: 1 fence, 2 new state, 3 channel, 4 transition JSON
-- Returns 1 when the fence holds the lease, else 0 (nothing written, nothing published), or 2
-- when there is no lease at all (Redis lost its data: not a fencing).
local cur = redis.call('GET', KEYS[1])
if not cur then return 2 end
local f, rest = string.match(cur, '^(%d+):[^:]+(.*)$')
if f ~= ARGV[1] or rest ~= '' then return 0 end
if redis.call('EXISTS', KEYS[2]) == 1 then
  redis.call('HSET', KEYS[2], 'state', ARGV[2])
end
redis.call('PUBLISH', ARGV[3], ARGV[4])
return 1
