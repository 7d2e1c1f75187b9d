// kvpacketd: serves one model over HTTP on a Unix socket. See DaemonOptions for the flags.
[assembly: System.Runtime.Versioning.SupportedOSPlatform("linux")]

return await KvPacket.Daemon.Daemon.RunAsync(args);
