-- Applies one replica's batch of joins and leaves to a room's presence hash and
-- publishes it as one presence_diff, in one step (chat.presence): the count in the
-- frame is the room's at that point in Redis' order, so the last diff a client
-- receives carries the current count, whichever replica sent it.
-- KEYS: the room's presence hash.
-- ARGV: the frame's head and tail around its count (chat.protocol), the pub/sub
--       channel to publish on ("" not to), the number of joins J, then J pairs
--       (channel, entry), then the channels that left.
-- Returns the room's count.
local room = KEYS[1]
local head, tail, channel = ARGV[1], ARGV[2], ARGV[3]
local joins = tonumber(ARGV[4])
for i = 0, joins - 1 do
  redis.call('HSET', room, ARGV[5 + 2 * i], ARGV[6 + 2 * i])
end
for i = 5 + 2 * joins, #ARGV do
  redis.call('HDEL', room, ARGV[i])
end
local count = redis.call('HLEN', room)
if channel ~= '' then
  -- The group event of chat.protocol.presence_event, in the channel layer's
  -- encoding (msgpack: chat.channel_layer checks that the layer decodes it).
  redis.call('PUBLISH', channel, cmsgpack.pack({
    type = 'presence.update', frame = head .. count .. tail
  }))
end
return count
