-- pool_acquire: take a slot in the tenant's pool if fewer than `limit` streams hold one.
-- KEYS: 1 pool hash (stream -> fence), 2 lease-expiry zset, 3 the stream's lease string
-- ARGV: 1 stream, 2 fence, 3 limit
-- Returns 1 when granted (or already held), 0 when the pool is full or the fence does not hold
-- the stream's lease. A slot lives as long as its stream's lease: holders whose lease expired
-- are evicted here, so a crashed pod's slots come back after its lease TTL. Atomic: at no
-- instant are there more live holders than the limit. Cost: O(pool size), never O(streams).
local cur = redis.call('GET', KEYS[3])
if not cur then return 0 end
local f, rest = string.match(cur, '^(%d+):[^:]+(.*)$')
if f ~= ARGV[2] or rest ~= '' then return 0 end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local flat = redis.call('HGETALL', KEYS[1])
local holders = {}
for i = 1, #flat, 2 do holders[#holders + 1] = flat[i] end
local count, present = 0, false
if #holders > 0 then
  local exp = redis.call('ZMSCORE', KEYS[2], unpack(holders))
  local evict = {}
  for i, stream in ipairs(holders) do
    local live = exp[i] and tonumber(exp[i]) > now
    if not live then
      evict[#evict + 1] = stream
    elseif stream == ARGV[1] then
      present = true
    else
      count = count + 1
    end
  end
  if #evict > 0 then redis.call('HDEL', KEYS[1], unpack(evict)) end
end
if present or count < tonumber(ARGV[3]) then
  redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
  return 1
end
return 0
