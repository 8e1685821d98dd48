# Root's login shell: the console (tty1) runs the rescue UI from
# rescue-console.service, and its shell after the UI comes from there too.
[ -f ~/.bashrc ] && . ~/.bashrc
