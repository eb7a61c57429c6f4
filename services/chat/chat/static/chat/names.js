// The rules for room names and display names, shared by the index and room pages: the
// server's own (chat.protocol), put in the page as JSON, so that a name the page accepts is
// one the server accepts, and the page can say why one is not.
const ChatNames = (function() {
    const protocol = JSON.parse(document.getElementById('chat-protocol').textContent);
    const roomName = new RegExp('^(?:' + protocol.ROOM_NAME_PATTERN + ')$');
    // Python's str.isprintable(): no control, format, surrogate, private-use or unassigned
    // character, and no separator but the plain space.
    const unprintable = /[\p{C}\p{Zl}\p{Zp}]|(?! )\p{Zs}/u;
    return {
        protocol: protocol,
        // Why a room name is refused, or null.
        roomNameProblem: function(name) {
            if (name === '') {
                return 'Type a room name: ' + protocol.ROOM_NAME_RULE + '.';
            }
            return roomName.test(name) ? null : 'A room name is ' + protocol.ROOM_NAME_RULE + '.';
        },
        // Why a display name (spaces around it dropped) is refused, or null; '' is none.
        displayNameProblem: function(name) {
            const length = Array.from(name).length;
            if (length > protocol.NAME_MAX_LENGTH) {
                return 'A name is at most ' + protocol.NAME_MAX_LENGTH + ' characters; this one has '
                    + length + '.';
            }
            if (unprintable.test(name)) {
                return 'A name cannot hold tabs, line breaks or other invisible control characters.';
            }
            return null;
        },
    };
})();
