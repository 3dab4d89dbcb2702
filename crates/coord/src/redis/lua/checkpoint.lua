-- checkpoint: store the last acked event id of many streams (of one tenant on a cluster; of
-- any tenants on a single node), each only if its fence holds the stream's lease and its
-- sequence is newer than the one that fence stored before. Three commands per call whatever
-- the number of writes: MGET, MSET and the EVALSHA itself.
-- KEYS: per write i: KEYS[3i-2] lease string, KEYS[3i-1] checkpoint string, KEYS[3i] its guard
--       (`{fence}:{seq}` of the write that stored it)
-- ARGV: per write i: ARGV[3i-2] fence, ARGV[3i-1] seq (decimal, no leading zeros), ARGV[3i] id
-- Returns per write: 1 saved, 0 fenced (another fence holds the lease, or it was released or
-- removed), 2 no lease at all (Redis lost its data: the owner re-asserts, then retries),
-- 3 superseded (this fence already stored this sequence or a newer one: nothing written).
-- A stream written twice in one call is judged against the earlier write too.
local n = #KEYS / 3
local reads = {}
for i = 1, n do
  reads[2 * i - 1] = KEYS[3 * i - 2]
  reads[2 * i] = KEYS[3 * i]
end
local cur = redis.call('MGET', unpack(reads))
-- Sequences are compared as decimal strings, so any u64 compares exactly.
local function newer(a, b)
  if #a ~= #b then return #a > #b end
  return a > b
end
local out, mset, latest = {}, {}, {}
for i = 1, n do
  local lease, guard = cur[2 * i - 1], cur[2 * i]
  local fence, seq = ARGV[3 * i - 2], ARGV[3 * i - 1]
  if not lease then
    out[i] = 2
  else
    local f, rest = string.match(lease, '^(%d+):[^:]+(.*)$')
    if f ~= fence or rest ~= '' then
      out[i] = 0
    else
      local stored = latest[KEYS[3 * i]]
      if stored == nil and guard then
        local gf, gs = string.match(guard, '^(%d+):(%d+)$')
        if gf == fence then stored = gs end
      end
      if stored and not newer(seq, stored) then
        out[i] = 3
      else
        out[i] = 1
        latest[KEYS[3 * i]] = seq
        mset[#mset + 1] = KEYS[3 * i - 1]
        mset[#mset + 1] = ARGV[3 * i]
        mset[#mset + 1] = KEYS[3 * i]
        mset[#mset + 1] = fence .. ':' .. seq
      end
    end
  end
end
if #mset > 0 then redis.call('MSET', unpack(mset)) end
return out
