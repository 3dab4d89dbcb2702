-- pool_release: free a stream's pool slot if this fence holds it.
-- KEYS: 1 pool hash   ARGV: 1 stream, 2 fence
if redis.call('HGET', KEYS[1], ARGV[1]) == ARGV[2] then
  redis.call('HDEL', KEYS[1], ARGV[1])
  return 1
end
return 0
