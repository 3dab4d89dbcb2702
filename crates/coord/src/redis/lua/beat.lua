-- beat: renew many leases of one tenant and record their liveness, in O(1) commands per call
-- (plus one HSET per record whose content changed).
-- KEYS: 1 live zset, 2 lease-expiry zset, 3 fence counter, then per beat i:
--       KEYS[2+2i] lease string, KEYS[3+2i] conn hash
-- ARGV: 1 tenant, 2 n, then per beat i ten values from ARGV[3+10(i-1)]:
--       stream, fence, owner, ttl ms, lastPong, write (1 = the record changed), socketId,
--       platform, state, retryCount
-- Returns one code per beat: 0 renewed, 1 re-asserted, 2 fenced.
--   stored fence == mine, live, not released  -> renewed
--   stored fence == mine, expired             -> re-asserted (lapsed, nobody took it; also when
--                                                a sweep already dropped its expiry)
--   no lease at all (Redis lost it)           -> re-asserted: the lease is written back
--   stored fence <  mine                      -> re-asserted: fences are granted in order, so a
--                                                lower one can only be a leftover of lost data
--   stored fence >  mine, or mine was released,
--   or the same fence held by another pod      -> fenced
-- The fence counter is raised to the highest re-asserted fence, so it never goes back below a
-- fence that was handed out. The conn hash is written only when the record changed, when the
-- stream was not in the live index (new, or swept), or on re-assertion.
local tenant = ARGV[1]
local n = tonumber(ARGV[2])
local S = 10
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)

local streams, leasekeys = {}, {}
for i = 1, n do
  streams[i] = ARGV[2 + (i - 1) * S + 1]
  leasekeys[i] = KEYS[2 + 2 * i]
end
local cur = redis.call('MGET', unpack(leasekeys))
local exp = redis.call('ZMSCORE', KEYS[2], unpack(streams))
local seen = redis.call('ZMSCORE', KEYS[1], unpack(streams))

local out, zleases, zlive = {}, {}, {}
local maxfence = 0
for i = 1, n do
  local b = 2 + (i - 1) * S
  local stream, fence, owner = ARGV[b + 1], ARGV[b + 2], ARGV[b + 3]
  local mine = tonumber(fence)
  local outcome, write_lease = 0, false
  local f, holder, rest = nil, nil, nil
  if cur[i] then
    f, holder, rest = string.match(cur[i], '^(%d+):([^:]+)(.*)$')
  end
  if not f then
    outcome, write_lease = 1, true
  else
    local stored = tonumber(f)
    if stored < mine then
      outcome, write_lease = 1, true
    elseif stored > mine or rest ~= '' or holder ~= owner then
      outcome = 2
    elseif exp[i] and tonumber(exp[i]) > now then
      outcome = 0
    else
      outcome = 1
    end
  end
  if write_lease then
    redis.call('SET', leasekeys[i], fence .. ':' .. owner)
    if mine > maxfence then maxfence = mine end
  elseif outcome == 1 then
    -- A lapsed lease handled by a sweep carries a retention TTL: it is live again.
    redis.call('PERSIST', leasekeys[i])
  end
  if outcome ~= 2 then
    zleases[#zleases + 1] = now + tonumber(ARGV[b + 4])
    zleases[#zleases + 1] = stream
    zlive[#zlive + 1] = ARGV[b + 5]
    zlive[#zlive + 1] = stream
    if ARGV[b + 6] == '1' or not seen[i] or outcome == 1 then
      local conn = KEYS[3 + 2 * i]
      redis.call('HSET', conn, 'socketId', ARGV[b + 7], 'lastPong', ARGV[b + 5],
        'platform', ARGV[b + 8], 'tenant', tenant, 'state', ARGV[b + 9],
        'retryCount', ARGV[b + 10], 'owner', owner, 'fence', fence)
      if not seen[i] then
        -- A swept (DEAD) record carries a retention TTL: it is live again.
        redis.call('PERSIST', conn)
      end
    end
  end
  out[i] = outcome
end
if #zleases > 0 then
  redis.call('ZADD', KEYS[2], unpack(zleases))
  redis.call('ZADD', KEYS[1], unpack(zlive))
end
if maxfence > 0 then
  local counter = tonumber(redis.call('GET', KEYS[3]) or '0') or 0
  if counter < maxfence then
    redis.call('SET', KEYS[3], string.format('%d', maxfence))
  end
end
return out
