-- Numbers, stores and publishes one chat message of a room, atomically (chat.history).
-- KEYS: the room's stream, its state hash, the message's ref key.
-- ARGV: the frame's head, middle and tail around its id and epoch (chat.protocol),
--       sent_at, max length, history ttl ms, state ttl ms, a new epoch if the room
--       has none, the pub/sub channel to publish on ("" not to), ref ttl ms.
-- Returns {id, epoch, duplicate (0 or 1), frame}; a duplicate's frame is the stored one
-- when the caller publishes (channel ""), else "".
local stream, state, ref_key = KEYS[1], KEYS[2], KEYS[3]
local head, middle, tail = ARGV[1], ARGV[2], ARGV[3]
local sent_at, max_length = ARGV[4], ARGV[5]
local history_ttl, state_ttl, new_epoch = ARGV[6], ARGV[7], ARGV[8]
local channel, ref_ttl = ARGV[9], ARGV[10]

local known = redis.call('GET', ref_key)
if known then
  local epoch = redis.call('HGET', state, 'epoch') or ''
  -- A write, so that a WAIT after this script also covers the first attempt's
  -- (replication keeps their order).
  redis.call('PEXPIRE', ref_key, ref_ttl)
  local frame = ''
  if channel == '' then
    -- For the caller to publish again: the first attempt may never have been.
    local entry = redis.call('XRANGE', stream, known .. '-0', known .. '-0')[1]
    if entry then frame = entry[2][2] end
  end
  return {tonumber(known), epoch, 1, frame}
end

local id = redis.call('HINCRBY', state, 'last_id', 1)
local epoch = redis.call('HGET', state, 'epoch')
if not epoch then
  epoch = new_epoch
  redis.call('HSET', state, 'epoch', epoch)
  -- The state went (evicted at maxmemory) while the history stayed: its ids are of
  -- the epoch before, and XADD would refuse id 1 after them.
  redis.call('DEL', stream)
end
local frame = head .. id .. middle .. epoch .. tail
redis.call('XADD', stream, 'MAXLEN', max_length, id .. '-0', 'f', frame, 't', sent_at)
redis.call('PEXPIRE', stream, history_ttl)
redis.call('PEXPIRE', state, state_ttl)
redis.call('SET', ref_key, id, 'PX', ref_ttl)
if channel ~= '' then
  -- The group event of chat.protocol.chat_event, in the channel layer's encoding
  -- (msgpack: chat.channel_layer checks that the layer decodes it).
  redis.call('PUBLISH', channel, cmsgpack.pack({
    type = 'chat.message', frame = frame, id = id, epoch = epoch, sent_at = tonumber(sent_at)
  }))
end
return {id, epoch, 0, frame}
