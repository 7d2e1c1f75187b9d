using Microsoft.Extensions.Logging;

namespace KvPacket.Store.Tests;

/// <summary>Keeps every message logged at warning or above, for tests that expect the store to report damage.</summary>
internal sealed class CollectingLogger : ILogger
{
    private readonly List<string> _messages = [];

    public IReadOnlyList<string> Messages { get { lock (_messages) return _messages.ToArray(); } }

    public IDisposable? BeginScope<TState>(TState state) where TState : notnull => null;

    public bool IsEnabled(LogLevel logLevel) => logLevel >= LogLevel.Warning;

    public void Log<TState>(LogLevel logLevel, EventId eventId, TState state, Exception? exception, Func<TState, Exception?, string> formatter)
    {
        if (IsEnabled(logLevel)) lock (_messages) _messages.Add(formatter(state, exception));
    }
}
