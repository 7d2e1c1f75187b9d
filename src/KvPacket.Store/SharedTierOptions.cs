using System.Globalization;

namespace KvPacket.Store;

/// <summary>Where the shared packet tier is and how patiently to talk to it.</summary>
public sealed record SharedTierOptions
{
    /// <summary>The server as StackExchange.Redis reads it: <c>HOST:PORT</c>, with <c>,password=…</c> or <c>,ssl=true</c> where needed.</summary>
    public required string Endpoint { get; init; }

    /// <summary>Longest wait for a connection or one command before it counts as failed.</summary>
    public TimeSpan Timeout { get; init; } = TimeSpan.FromSeconds(2);

    /// <summary>Retries of a command that failed on a timeout or a dropped connection.</summary>
    public int Retries { get; init; } = 2;

    /// <summary>Wait before the first retry (doubling after).</summary>
    public TimeSpan RetryDelay { get; init; } = TimeSpan.FromMilliseconds(50);

    /// <summary>Prefix of every key; the record format's version is part of it so formats never mix.</summary>
    public string KeyPrefix { get; init; } = "kvp1";

    /// <summary>
    /// Reads <c>redis://[:PASSWORD@]HOST:PORT</c>, <c>rediss://…</c> (TLS) or a plain <c>HOST:PORT</c>.
    /// </summary>
    /// <exception cref="FormatException">Not one of those.</exception>
    public static SharedTierOptions Parse(string address)
    {
        if (!address.Contains("://", StringComparison.Ordinal))
            return HasPort(address) ? new SharedTierOptions { Endpoint = address } : throw NotAnAddress(address);
        if (!Uri.TryCreate(address, UriKind.Absolute, out var uri) || uri.Scheme is not ("redis" or "rediss") || uri.Port <= 0 || uri.Host.Length == 0)
            throw NotAnAddress(address);
        string endpoint = string.Create(CultureInfo.InvariantCulture, $"{uri.Host}:{uri.Port}");
        if (uri.Scheme == "rediss") endpoint += ",ssl=true";
        string password = Uri.UnescapeDataString(uri.UserInfo.Split(':') is [_, var secret] ? secret : uri.UserInfo);
        if (password.Length > 0) endpoint += ",password=" + password;
        return new SharedTierOptions { Endpoint = endpoint };
    }

    private static bool HasPort(string address) =>
        address.LastIndexOf(':') is int colon and > 0 && int.TryParse(address.AsSpan(colon + 1), NumberStyles.None, CultureInfo.InvariantCulture, out int port) && port is > 0 and < 65536;

    private static FormatException NotAnAddress(string address) =>
        new($"'{address}' is not a shared tier address: give redis://HOST:PORT, rediss://HOST:PORT or HOST:PORT.");
}
