"""Network shares as image locations: SMB, NFS and SSH (sshfs), mounted in private folders.

``location`` reads and checks a share URL, ``mounts`` mounts one (and records the
mounts made for scripts by ``rescue mount-share``), ``smb``/``nfs``/``ssh`` build each
tool's arguments and turn its failures into the errors of ``errors``, ``hostkeys``
checks an SSH server's key before anything is sent to it. No user interface here:
the CLI asks the questions (passwords, host keys) and hands the answers in.
"""
