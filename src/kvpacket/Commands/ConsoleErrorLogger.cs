using Microsoft.Extensions.Logging;

namespace KvPacket.Cli.Commands;

/// <summary>Writes warnings and errors to standard error, one line each.</summary>
internal sealed class ConsoleErrorLogger : ILogger
{
    public static readonly ConsoleErrorLogger Instance = new();

    public IDisposable? BeginScope<TState>(TState state) where TState : notnull => null;

    public bool IsEnabled(LogLevel logLevel) => logLevel >= LogLevel.Warning;

    public void Log<TState>(LogLevel logLevel, EventId eventId, TState state, Exception? exception, Func<TState, Exception?, string> formatter)
    {
        if (IsEnabled(logLevel)) Console.Error.WriteLine($"{logLevel.ToString().ToLowerInvariant()}: {formatter(state, exception)}");
    }
}
