-- sweep: declare DEAD, exactly once, the streams of one tenant whose owner stopped vouching
-- (the lease lapsed: its expiry is past Redis's clock) and whose last pong is older than the
-- cutoff; publish each transition; drop them from the live index. Atomic, so two pods sweeping
-- the same entry produce one DEAD. Driven by the lease-expiry index: the cost is
-- O(log N + lapsed leases), never a scan, and a live owner whose socket is down (reconnecting:
-- its pong is old but it still renews its lease) costs nothing.
-- KEYS: 1 lease-expiry zset, 2 live zset
-- ARGV: 1 key prefix `sk:{T}:`, 2 cutoff (lastPong < cutoff is stale), 3 limit, 4 offset (lapsed
--       entries skipped by earlier calls of the same sweep), 5 now (ms, the transitions' `at`),
--       6 channel, 7 tenant, 8 retention ms of a DEAD record, 9 retention ms of a dead lease
-- Returns {candidates taken, candidates skipped (lapsed, but the last pong is recent), {JSON..}}.
-- A lapsed lease leaves the expiry index once handled; its string stays (it still fences its
-- owner: a late beat re-asserts it only if nobody took it) and expires after the retention.
-- An entry already DEAD (its owner said so) leaves without a second DEAD.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local cutoff = tonumber(ARGV[2])
local cands = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', '(' .. string.format('%d', now),
  'LIMIT', tonumber(ARGV[4]), tonumber(ARGV[3]))
local out, done, gone, skipped = {}, {}, {}, 0
for _, stream in ipairs(cands) do
  local pong = redis.call('ZSCORE', KEYS[2], stream)
  if pong and tonumber(pong) >= cutoff then
    skipped = skipped + 1
  else
    if pong then
      local conn = ARGV[1] .. 'conn:' .. stream
      local h = redis.call('HMGET', conn, 'state', 'owner', 'fence')
      local from = h[1] or 'ACTIVE'
      if from ~= 'DEAD' then
        -- The last pong lives in the live index, which the stream leaves now: the record
        -- keeps it (the hash's own is from its last change, maybe its connect), for a
        -- successor on a platform without replay, whose gap starts there.
        redis.call('HSET', conn, 'state', 'DEAD', 'lastPong', string.format('%d', tonumber(pong)))
        local owner = 'null'
        if h[2] then owner = cjson.encode(h[2]) end
        local fence = 'null'
        if h[3] and string.match(h[3], '^%d+$') then fence = h[3] end
        local msg = '{"stream":' .. cjson.encode(stream) .. ',"tenant":' .. cjson.encode(ARGV[7])
          .. ',"from":' .. cjson.encode(from) .. ',"to":"DEAD","reason":"stale","owner":' .. owner
          .. ',"fence":' .. fence .. ',"at":' .. ARGV[5] .. '}'
        redis.call('PUBLISH', ARGV[6], msg)
        out[#out + 1] = msg
      end
      redis.call('PEXPIRE', conn, ARGV[8])
      gone[#gone + 1] = stream
    end
    redis.call('PEXPIRE', ARGV[1] .. 'lease:' .. stream, ARGV[9])
    done[#done + 1] = stream
  end
end
if #done > 0 then redis.call('ZREM', KEYS[1], unpack(done)) end
if #gone > 0 then redis.call('ZREM', KEYS[2], unpack(gone)) end
return {#cands, skipped, out}
