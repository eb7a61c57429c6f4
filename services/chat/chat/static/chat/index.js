// The index page's script (templates/chat/index.html), a file of its own so that a
// Content-Security-Policy can allow it without 'unsafe-inline'.
const roomNameInput = document.querySelector('#room-name-input');
const displayNameInput = document.querySelector('#display-name-input');
displayNameInput.value = localStorage.getItem('chat-display-name') || '';
roomNameInput.focus();
roomNameInput.onkeyup = function(e) {
    if (e.key === 'Enter') {  // enter, return
        document.querySelector('#room-name-submit').click();
    }
};

document.querySelector('#room-name-submit').onclick = function(e) {
    const roomName = roomNameInput.value;
    const valid = roomName !== '' && roomNameInput.checkValidity();
    document.querySelector('#room-name-error').hidden = valid;
    if (valid) {
        const displayName = displayNameInput.value.trim();
        if (displayName) {
            localStorage.setItem('chat-display-name', displayName);
        }
        window.location.pathname = '/chat/' + encodeURIComponent(roomName) + '/';
    }
};
