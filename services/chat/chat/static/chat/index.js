// The index page's script (templates/chat/index.html), a file of its own so that a
// Content-Security-Policy can allow it without 'unsafe-inline'. Names are checked by the
// server's rules (names.js) before the room opens, with the reason shown.
const roomNameInput = document.querySelector('#room-name-input');
const displayNameInput = document.querySelector('#display-name-input');
displayNameInput.value = localStorage.getItem('chat-display-name') || '';
roomNameInput.focus();

function showProblem(input, problem) {
    const error = document.getElementById(input.getAttribute('aria-describedby'));
    error.textContent = problem || '';
    error.hidden = !problem;
    input.setAttribute('aria-invalid', problem ? 'true' : 'false');
    return problem;
}

// Once a name was refused, its reason follows the typing.
roomNameInput.oninput = function() {
    if (roomNameInput.getAttribute('aria-invalid') === 'true') {
        showProblem(roomNameInput, ChatNames.roomNameProblem(roomNameInput.value));
    }
};
displayNameInput.oninput = function() {
    if (displayNameInput.getAttribute('aria-invalid') === 'true') {
        showProblem(displayNameInput, ChatNames.displayNameProblem(displayNameInput.value.trim()));
    }
};

function enterOnReturn(e) {
    if (e.key === 'Enter') {  // enter, return
        document.querySelector('#room-name-submit').click();
    }
}
roomNameInput.onkeyup = enterOnReturn;
displayNameInput.onkeyup = enterOnReturn;

document.querySelector('#room-name-submit').onclick = function(e) {
    const roomName = roomNameInput.value;
    const displayName = displayNameInput.value.trim();
    const nameProblem = showProblem(displayNameInput, ChatNames.displayNameProblem(displayName));
    const roomProblem = showProblem(roomNameInput, ChatNames.roomNameProblem(roomName));
    if (roomProblem || nameProblem) {
        (roomProblem ? roomNameInput : displayNameInput).focus();
        return;
    }
    let query = '';
    if (displayName) {
        localStorage.setItem('chat-display-name', displayName);
        query = '?name=' + encodeURIComponent(displayName);
    }
    window.location.href = '/chat/' + encodeURIComponent(roomName) + '/' + query;
};
