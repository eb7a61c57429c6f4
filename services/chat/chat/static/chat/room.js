// The room page's script (templates/chat/room.html), a file of its own so that a
// Content-Security-Policy can allow it without 'unsafe-inline'.
// Plain JavaScript, no asset from the internet. Everything a peer sends is
// shown with .textContent, never parsed as HTML.
const roomName = JSON.parse(document.getElementById('room-name').textContent);
// The subprotocol, close codes, gap kinds and retryable error codes of chat.protocol, put
// in the page by views.room (read by names.js): this file repeats none of them.
const PROTOCOL = ChatNames.protocol;

// The name: ?name= in the address if the server would take it, else the last one used.
const nameInAddress = (new URLSearchParams(window.location.search).get('name') || '').trim();
const nameProblem = nameInAddress ? ChatNames.displayNameProblem(nameInAddress) : null;
let displayName = (nameInAddress && !nameProblem) ? nameInAddress
    : localStorage.getItem('chat-display-name') || 'guest-' + Math.random().toString(16).slice(2, 6);
localStorage.setItem('chat-display-name', displayName);
document.querySelector('#display-name').textContent = displayName;

const chatLog = document.querySelector('#chat-log');
const conversation = document.querySelector('.conversation');
const errorLine = document.querySelector('#chat-error');
const messageInput = document.querySelector('#chat-message-input');
const scheme = window.location.protocol === 'https:' ? 'wss://' : 'ws://';
const socketBase = scheme + window.location.host + '/ws/chat/'
    + encodeURIComponent(roomName) + '/?name=' + encodeURIComponent(displayName);
// Reconnect with exponential backoff and full jitter, capped; a replica that
// restarts (CLOSE_SERVICE_RESTART) is left at once, with a little jitter.
const backoff = {initial: 500, max: 10000, attempt: 0, restartJitter: 500};
const {CLOSE_SERVICE_RESTART, CLOSE_INVALID_ROOM} = PROTOCOL;
let chatSocket = null;
let joined = false;  // welcomed on the current socket
let maxMessageBytes = 4096;  // until the welcome says

// The last message shown, (epoch, id): a reconnect resumes after it. lastId
// stays null until a first join, which then replays the room's newest messages.
const position = {epoch: null, lastId: null};
// Every (epoch, id) shown, so that a replay overlapping the log adds nothing;
// the oldest are forgotten (a resume never replays what precedes position).
const shown = new Set();
const SHOWN_KEPT = 5000;

// Messages sent but not acknowledged, by ref, in the order they were typed.
// Each is sent again on every reconnect with the same ref: the server
// acknowledges a ref it already published with its first id, without
// publishing it twice.
const outbox = new Map();
const RETRY_MS = {[PROTOCOL.UNAVAILABLE]: 1000, [PROTOCOL.RATE_LIMITED]: 1500};

function setState(state, detail) {
    const element = document.querySelector('#connection-state');
    element.dataset.state = state;
    element.textContent = detail ? state + ' (' + detail + ')' : state;
}

function notice(text) {
    const time = new Date().toLocaleTimeString();
    document.querySelector('#chat-notice').textContent = time + ' · ' + text;
}
if (nameProblem) {
    notice('The name in the address was not used: ' + nameProblem);
}

// The log as the tutorial's textarea had it, "name: message" a line: its tests, and
// ours, read #chat-log's value. The list shows the newest SHOWN_IN_LOG messages.
const transcript = [];
Object.defineProperty(chatLog, 'value', {get: function() { return transcript.join(''); }});
const SHOWN_IN_LOG = 500;
const timeFormat = new Intl.DateTimeFormat(undefined, {hour: '2-digit', minute: '2-digit'});

// A system message (sent by server code: "system": true) is never the reader's own.
function messageItem(name, text, time, own, system) {
    const item = document.createElement('li');
    item.className = system ? 'message system' : own ? 'message own' : 'message';
    const meta = document.createElement('div');
    meta.className = 'meta';
    const sender = document.createElement('span');
    sender.className = 'sender';
    sender.textContent = system ? name + ' (system)' : own ? name + ' (you)' : name;
    meta.append(sender);
    if (time !== null) {
        const stamp = document.createElement('time');
        stamp.dateTime = time.toISOString();
        stamp.title = time.toLocaleString();
        stamp.textContent = timeFormat.format(time);
        meta.append(stamp);
    }
    const body = document.createElement('p');
    body.className = 'text';
    body.textContent = text;
    item.append(meta, body);
    return item;
}

// Keeps the newest message in view, unless the reader scrolled up to read older ones.
function followingLog() {
    return conversation.scrollHeight - conversation.scrollTop - conversation.clientHeight < 48;
}

function scrollToNewest() {
    conversation.scrollTop = conversation.scrollHeight;
}

function socketUrl() {
    if (position.lastId === null) {
        return socketBase;
    }
    let url = socketBase + '&last_id=' + position.lastId;
    if (position.epoch) {
        url += '&epoch=' + encodeURIComponent(position.epoch);
    }
    return url;
}

function showChat(data) {
    if (Number.isInteger(data.id) && typeof data.epoch === 'string') {
        const key = data.epoch + ':' + data.id;
        if (shown.has(key)) {
            return;
        }
        shown.add(key);
        if (shown.size > SHOWN_KEPT) {
            shown.delete(shown.values().next().value);
        }
        if (position.epoch !== null && data.epoch !== position.epoch) {
            // Heard live: the server lost the room's history and began anew.
            notice('Some messages may be missing: the server lost the room\'s recent history.');
        }
        if (data.epoch !== position.epoch || data.id > position.lastId) {
            position.epoch = data.epoch;
            position.lastId = data.id;
        }
    }
    const who = data.name ? data.name + ': ' : '';
    transcript.push(who + data.message + '\n');
    const following = followingLog();
    const time = Number.isFinite(data.time) ? new Date(data.time) : null;
    const system = data.system === true;
    const own = !system && data.name === displayName;
    chatLog.append(messageItem(data.name || '', data.message, time, own, system));
    if (chatLog.children.length > SHOWN_IN_LOG) {
        chatLog.firstElementChild.remove();
    }
    if (following) {
        scrollToNewest();
    }
}

function showHistory(data) {
    // Ids up to the room's last count as seen: the missed ones were replayed
    // just before, a new joiner is shown only the newest.
    if (data.epoch !== position.epoch || position.lastId === null) {
        position.epoch = data.epoch;
        position.lastId = data.last_id;
    } else {
        position.lastId = Math.max(position.lastId, data.last_id);
    }
    if (data.gap === PROTOCOL.GAP_TRIMMED) {
        notice('Some older messages may be missing: the room\'s history does not go back that far.');
    } else if (data.gap === PROTOCOL.GAP_RESET) {
        notice('Some messages may be missing: the server lost the room\'s recent history.');
    }
}

// Who is in the room, by connection id (two tabs of one name are two members): a
// snapshot on joining, then diffs, applied by id so that one applied twice changes
// nothing. A large room's snapshot lists only some members; the count is everyone.
const members = new Map();

function showPresence(data) {
    if (data.type === 'presence') {
        members.clear();
        data.members.forEach(function(member) { members.set(member.id, member.name); });
    } else {
        data.left.forEach(function(id) { members.delete(id); });
        data.joined.forEach(function(member) { members.set(member.id, member.name); });
    }
    const names = Array.from(members.values()).sort();
    document.querySelector('#presence').replaceChildren(...names.map(function(name) {
        const item = document.createElement('li');
        item.textContent = name;
        return item;
    }));
    document.querySelector('#presence-count').textContent = data.count;
    document.querySelector('#presence-toggle-count').textContent = data.count;
    const more = data.count - names.length;
    document.querySelector('#presence-more').textContent = more > 0 ? 'and ' + more + ' more' : '';
}

function showPending() {
    const following = followingLog();
    const list = document.querySelector('#chat-pending');
    list.replaceChildren(...Array.from(outbox.values(), function(entry) {
        const item = messageItem(displayName, entry.message, null, true);
        item.classList.add('sending');
        const state = document.createElement('span');
        state.className = 'sending-state';
        state.textContent = 'sending…';
        item.querySelector('.meta').append(state);
        return item;
    }));
    if (following) {
        scrollToNewest();
    }
}

function transmit(ref) {
    const entry = outbox.get(ref);
    if (!entry || !joined || chatSocket.readyState !== WebSocket.OPEN) {
        return;  // sent on the next welcome
    }
    clearTimeout(entry.retry);
    chatSocket.send(JSON.stringify({message: entry.message, ref: ref}));
}

function retryLater(ref, delay) {
    const entry = outbox.get(ref);
    if (entry) {
        clearTimeout(entry.retry);
        entry.retry = setTimeout(transmit, delay * (1 + Math.random()), ref);
    }
}

function settle(data) {
    const entry = outbox.get(data.ref);
    if (!entry) {
        return;
    }
    clearTimeout(entry.retry);
    outbox.delete(data.ref);
    showPending();
    return entry;
}

function newRef() {
    const bytes = crypto.getRandomValues(new Uint8Array(12));
    return Array.from(bytes, function(b) { return b.toString(16).padStart(2, '0'); }).join('');
}

function connect() {
    setState(chatSocket ? 'reconnecting' : 'connecting');
    joined = false;
    chatSocket = new WebSocket(socketUrl(), [PROTOCOL.SUBPROTOCOL]);

    chatSocket.onmessage = function(e) {
        const data = JSON.parse(e.data);
        if (data.type === 'welcome') {
            joined = true;
            backoff.attempt = 0;
            maxMessageBytes = data.max_message_bytes || maxMessageBytes;
            setState('live');
            errorLine.textContent = '';
            document.querySelector('#socket-replica').textContent = data.replica;
            if (data.name && data.name !== displayName) {
                displayName = data.name;  // the server's word: what the others see
                document.querySelector('#display-name').textContent = displayName;
            }
            // The server reads these after the replay it sends first.
            outbox.forEach(function(entry, ref) { transmit(ref); });
        } else if (data.type === 'chat') {
            showChat(data);
        } else if (data.type === 'history') {
            showHistory(data);
        } else if (data.type === 'ack') {
            if (settle(data)) {
                errorLine.textContent = '';
            }
        } else if (data.type === 'presence' || data.type === 'presence_diff') {
            showPresence(data);
        } else if (data.type === 'error') {
            if (data.ref && Object.hasOwn(RETRY_MS, data.code)) {
                // Not sent: kept, and sent again shortly.
                errorLine.textContent = data.detail + ' Retrying…';
                retryLater(data.ref, RETRY_MS[data.code]);
            } else {
                errorLine.textContent = data.detail;
                const entry = data.ref ? settle(data) : null;
                if (entry && !messageInput.value) {
                    messageInput.value = entry.message;  // refused for good: back to the box
                }
            }
        }
    };

    chatSocket.onclose = function(e) {
        const wasJoined = joined;
        joined = false;
        document.querySelector('#socket-replica').textContent = '…';
        if (e.code === CLOSE_INVALID_ROOM) {  // retrying cannot help
            setState('closed', 'invalid room name');
            return;
        }
        let delay;
        if (e.code === CLOSE_SERVICE_RESTART && wasJoined) {
            // The replica is draining: others are up, resume on one of them now.
            delay = Math.random() * backoff.restartJitter;
        } else {
            // Lost, refused (1013: try again later) or too slow to read (4008): back off.
            delay = Math.random() * Math.min(backoff.max, backoff.initial * 2 ** backoff.attempt);
            backoff.attempt += 1;
        }
        setState('reconnecting', 'retry in ' + (delay / 1000).toFixed(1) + ' s');
        setTimeout(connect, delay);
    };
}
connect();

messageInput.focus();
messageInput.onkeyup = function(e) {
    if (e.key === 'Enter') {  // enter, return
        document.querySelector('#chat-message-submit').click();
    }
};

// On narrow screens the people list is a panel the count in the header opens.
const peopleToggle = document.querySelector('#presence-toggle');
peopleToggle.onclick = function() {
    const open = peopleToggle.getAttribute('aria-expanded') !== 'true';
    peopleToggle.setAttribute('aria-expanded', String(open));
    document.body.classList.toggle('people-open', open);
};
document.addEventListener('keydown', function(e) {
    if (e.key === 'Escape' && peopleToggle.getAttribute('aria-expanded') === 'true') {
        peopleToggle.click();
        peopleToggle.focus();
    }
});

document.querySelector('#chat-message-submit').onclick = function(e) {
    const message = messageInput.value;
    messageInput.focus();  // a click on Send leaves the typing where it was
    if (message.trim() === '') {
        return;
    }
    const ref = newRef();
    const size = new TextEncoder().encode(JSON.stringify({message: message, ref: ref})).length;
    if (size > maxMessageBytes) {
        errorLine.textContent = 'Message too long: at most ' + maxMessageBytes + ' bytes. It was not sent.';
        return;
    }
    // Kept until acknowledged; while reconnecting it waits for the next socket.
    outbox.set(ref, {message: message, retry: null});
    showPending();
    scrollToNewest();
    messageInput.value = '';
    transmit(ref);
};
