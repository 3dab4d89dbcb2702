-- checkpoint: store the last acked event id of many streams of one tenant, each only if its
-- fence holds the stream's lease. O(1) commands per call.
-- KEYS: per checkpoint i: KEYS[2i-1] lease string, KEYS[2i] checkpoint string
-- ARGV: per checkpoint i: ARGV[2i-1] fence, ARGV[2i] event id
-- Returns per checkpoint: 1 written, 0 refused (the fence does not hold the lease), 2 refused
-- because there is no lease at all (Redis lost its data: the owner re-asserts, then retries).
local n = #KEYS / 2
local leasekeys = {}
for i = 1, n do leasekeys[i] = KEYS[2 * i - 1] end
local cur = redis.call('MGET', unpack(leasekeys))
local out, mset = {}, {}
for i = 1, n do
  out[i] = 2
  if cur[i] then
    out[i] = 0
    local f, rest = string.match(cur[i], '^(%d+):[^:]+(.*)$')
    if f == ARGV[2 * i - 1] and rest == '' then
      out[i] = 1
      mset[#mset + 1] = KEYS[2 * i]
      mset[#mset + 1] = ARGV[2 * i]
    end
  end
end
if #mset > 0 then redis.call('MSET', unpack(mset)) end
return out
