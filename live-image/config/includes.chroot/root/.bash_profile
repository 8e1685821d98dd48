# The console (tty1) starts the rescue UI; leaving it gives a shell.
[ -f ~/.bashrc ] && . ~/.bashrc
if [ "$(tty)" = /dev/tty1 ] && [ -z "${RESCUE_UI_STARTED:-}" ]; then
	export RESCUE_UI_STARTED=1
	rescue
	echo "rescue exited; this is a root shell. Type 'rescue' to start it again."
fi
