"""The bridge plugin: its config, the ADD/DEL/CHECK/GC/STATUS transaction, the MAC spoof
check, address announcements and ipMasq (names and rules as the reference writes them).

May import `cni`, `ipam` and `kernel`.
"""
