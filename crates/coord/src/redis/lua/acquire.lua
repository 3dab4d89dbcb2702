-- acquire: take a stream's lease if nobody holds it.
-- KEYS: 1 lease string, 2 the tenant's lease-expiry zset, 3 the tenant's fence counter
-- ARGV: 1 stream, 2 owner, 3 ttl ms
-- Returns {fence, previous owner, previous fence} when granted (the previous owner is '' unless
-- the lease lapsed without a release: a crashed or frozen owner), or {0, ms left} while a live
-- lease is held by anyone.
-- The lease is free when absent, released, or lapsed (its expiry score is past Redis's clock,
-- or gone). SET clears any retention TTL the old string carried.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local cur = redis.call('GET', KEYS[1])
local curfence = 0
local lapsed_owner = ''
if cur then
  local f, owner, rest = string.match(cur, '^(%d+):([^:]+)(.*)$')
  if f then
    curfence = tonumber(f)
    if rest == '' then
      local exp = redis.call('ZSCORE', KEYS[2], ARGV[1])
      if exp and tonumber(exp) > now then
        return {0, tonumber(exp) - now}
      end
      lapsed_owner = owner
    end
  end
end
-- Fences only grow, also when Redis lost its data (counter and leases): never below the
-- lease's own fence, nor below Redis's clock in microseconds, which every earlier grant was
-- floored at too. No tenant is granted fences faster than one per microsecond (each grant is
-- a script run), so a grant after a wipe is newer than any grant before it. (Milliseconds
-- were not enough: a tenant's burst of grants runs its counter ahead of a millisecond clock,
-- and a wipe within that lead handed out a fence again.) Microseconds stay exact in Lua's
-- doubles (below 2^53) for two more centuries.
local fence = redis.call('INCR', KEYS[3])
local floor = math.max(curfence + 1, tonumber(t[1]) * 1000000 + tonumber(t[2]))
if fence < floor then
  fence = floor
  redis.call('SET', KEYS[3], string.format('%d', fence))
end
redis.call('SET', KEYS[1], string.format('%d', fence) .. ':' .. ARGV[2])
redis.call('ZADD', KEYS[2], now + tonumber(ARGV[3]), ARGV[1])
return {fence, lapsed_owner, curfence}
