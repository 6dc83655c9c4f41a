"""Native readers of package databases: which packages an image has, with their changelogs.

For comparing two images ("what will this reboot change") without running the image's own
package manager: rpm's header format (:mod:`.header`) in its sqlite and Berkeley DB backends
(:mod:`.rpmdb`, :mod:`.bdb`), dpkg's status file and changelogs (:mod:`.dpkg`), version
ordering exactly as rpm and dpkg define it (:mod:`.vercmp`), one model for both
(:mod:`.model`). Everything read is image content: only :class:`.errors.PackageDbError`
escapes on bad input.
"""
