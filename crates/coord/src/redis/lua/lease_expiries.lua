-- lease_expiries: how the leases of many streams of one tenant stand, on Redis's clock, for
-- standbys that ask only when a lease lapses. Read-only; four commands per call whatever the
-- number of streams (TIME, MGET, ZMSCORE and the EVALSHA itself).
-- KEYS: 1 the tenant's lease-expiry zset, then KEYS[1+i] the lease string of stream i
-- ARGV: per stream i: ARGV[i] the stream
-- Returns per stream: ms left (>= 1) while a live lease holds it, -1 free (no lease, or a
-- released or removed one), -2 lapsed (granted, not given up, not renewed in time; also once
-- a sweep dropped its expiry entry).
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local leasekeys = {}
for i = 1, #ARGV do leasekeys[i] = KEYS[1 + i] end
local cur = redis.call('MGET', unpack(leasekeys))
local exp = redis.call('ZMSCORE', KEYS[1], unpack(ARGV))
local out = {}
for i = 1, #ARGV do
  out[i] = -1
  if cur[i] then
    local f, rest = string.match(cur[i], '^(%d+):[^:]+(.*)$')
    if f and rest == '' then
      if exp[i] and tonumber(exp[i]) > now then
        out[i] = math.max(1, math.floor(tonumber(exp[i]) - now))
      else
        out[i] = -2
      end
    end
  end
end
return out
